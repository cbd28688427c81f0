/* test_cli.c - the popcast command line, run as the real binary: every
 * wrong command line exits 2 and sends nothing (a TCP listener posing as
 * the controller sees no connection; a real controller's request counter
 * does not move and its state is unchanged), --help and --version, and
 * the exit codes of --wait against a real controller and agent: 3 nacked,
 * 4 timed out, 5 no agents, 1 a failed request. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

#define MAX_ARGV 24

/* A listener posing as the controller: a CLI that sends anything must
 * connect to it first. */
static int listen_fd = -1;
static char listen_url[64];
static char dir[300];                     /* files the command lines name */
static char lua_path[400];                /* a Lua file (deploy's PATH) */
static char key_path[400], pub_path[400]; /* a key pair made by popcast keygen */
static char token_path[400];              /* a token file */
static char missing_path[400];            /* a path that does not exist */

typedef struct run_result {
    int rc;
    int connections; /* accepted by the listener while the CLI ran */
    char out[16384], err[8192];
} run_result;

static void read_into(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* Accepts (and closes at once) every connection waiting on the listener;
 * returns how many there were. */
static int drain_listener(void)
{
    int n = 0;
    struct pollfd p = {listen_fd, POLLIN, 0};
    while (poll(&p, 1, 0) > 0 && (p.revents & POLLIN)) {
        int fd = accept(listen_fd, NULL, NULL);
        if (fd < 0)
            break;
        close(fd);
        n++;
    }
    return n;
}

static const char *substitute(const char *a)
{
    if (strcmp(a, "@LUA") == 0)
        return lua_path;
    if (strcmp(a, "@KEY") == 0)
        return key_path;
    if (strcmp(a, "@PUB") == 0)
        return pub_path;
    if (strcmp(a, "@DIR") == 0)
        return dir;
    if (strcmp(a, "@MISSING") == 0)
        return missing_path;
    if (strcmp(a, "@LISTENER") == 0)
        return listen_url;
    return a;
}

/* Runs popcast with args (NULL-terminated; @NAME placeholders are
 * replaced by the files above). Its environment names the listener as
 * the controller and the token file; env ("NAME=VALUE" to set, "NAME" to
 * unset, NULL-terminated, may be NULL) changes that. Every connection
 * made to the listener meanwhile is accepted and closed at once, so a CLI
 * that sends a request fails fast instead of waiting for an answer. */
static void run_env(const char *const *args, const char *const *env, run_result *r)
{
    char out_path[400], err_path[400];
    snprintf(out_path, sizeof(out_path), "%s/stdout", dir);
    snprintf(err_path, sizeof(err_path), "%s/stderr", dir);
    const char *cli = getenv("POPCAST_CLI_BIN");
    if (cli == NULL)
        fail_msg("POPCAST_CLI_BIN is not set (run the tests through ctest)");
    drain_listener();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (o < 0 || e < 0)
            _exit(126);
        dup2(o, 1);
        dup2(e, 2);
        close(listen_fd);
        const char *vars[] = {"POPCAST_CONTROLLER", "POPCAST_TOKEN",     "POPCAST_TOKEN_FILE",
                              "POPCAST_CA_FILE",    "POPCAST_RETRY_FOR", "POPCAST_TLS_SERVER_NAME"};
        for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
            unsetenv(vars[i]);
        setenv("POPCAST_CONTROLLER", listen_url, 1);
        /* The listener closes every connection: no retries. */
        setenv("POPCAST_RETRY_FOR", "0", 1);
        setenv("POPCAST_TOKEN_FILE", token_path, 1);
        for (size_t i = 0; env != NULL && env[i] != NULL; i++) {
            char name[64];
            const char *eq = strchr(env[i], '=');
            snprintf(name, sizeof(name), "%.*s", eq ? (int)(eq - env[i]) : 63, env[i]);
            if (eq != NULL)
                setenv(name, substitute(eq + 1), 1);
            else
                unsetenv(name);
        }
        char *argv[MAX_ARGV + 2];
        int n = 0;
        argv[n++] = (char *)cli;
        for (size_t i = 0; args[i] != NULL && n <= MAX_ARGV; i++)
            argv[n++] = (char *)substitute(args[i]);
        argv[n] = NULL;
        execv(argv[0], argv);
        _exit(127);
    }
    /* Wait for the CLI's exit and the listener's connections alike. */
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    assert_true(pidfd >= 0);
    r->connections = 0;
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (;;) {
        struct pollfd p[2] = {{pidfd, POLLIN, 0}, {listen_fd, POLLIN, 0}};
        int left = (int)(deadline - pc_test_now_ms());
        if (left <= 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            close(pidfd);
            fail_msg("popcast %s did not exit", args[0]);
        }
        if (poll(p, 2, left) < 0 && errno != EINTR)
            fail_msg("poll: %s", strerror(errno));
        if (p[1].revents & POLLIN)
            r->connections += drain_listener();
        if (p[0].revents & POLLIN)
            break;
    }
    close(pidfd);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    /* A connection the CLI made just before it exited is queued by now. */
    r->connections += drain_listener();
    r->rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    read_into(out_path, r->out, sizeof(r->out));
    read_into(err_path, r->err, sizeof(r->err));
}

static void run(const char *const *args, run_result *r)
{
    run_env(args, NULL, r);
}

static void describe(const char *const *args, char *out, size_t cap)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; args[i] != NULL && used < cap; i++)
        used += (size_t)snprintf(out + used, cap - used, "%s%s", i ? " " : "", args[i]);
}

/* A usage error: exit 2, nothing on stdout, one line naming the problem
 * (containing want, if not NULL) and "see 'popcast WORDS --help'" on
 * stderr, and no connection to the controller. */
static void expect_usage_env(const char *words, const char *want, const char *const *args,
                             const char *const *env)
{
    static run_result r;
    char cmd[512], see[128];
    describe(args, cmd, sizeof(cmd));
    run_env(args, env, &r);
    snprintf(see, sizeof(see), "\nsee 'popcast%s%s --help'\n", words[0] ? " " : "", words);
    const char *nl = strchr(r.err, '\n');
    if (r.rc != 2 || r.connections != 0 || r.out[0] != '\0' || nl == NULL || strcmp(nl, see) != 0 ||
        (want != NULL && strstr(r.err, want) == NULL))
        fail_msg("popcast %s: exit %d, %d connection(s) to the controller\nstdout: %s\nstderr: "
                 "%s\n(want exit 2, no connection, stderr one line%s%s%s then%s)",
                 cmd, r.rc, r.connections, r.out, r.err, want ? " containing '" : "",
                 want ? want : "", want ? "'" : "", see);
}

static void expect_usage(const char *words, const char *want, const char *const *args)
{
    expect_usage_env(words, want, args, NULL);
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static int setup(void **state)
{
    (void)state;
    pc_test_init();
    pc_test_tmpdir(dir, sizeof(dir), "cli");
    snprintf(lua_path, sizeof(lua_path), "%s/main.lua", dir);
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "hello");
    pc_test_write_file(lua_path, src, strlen(src));
    snprintf(token_path, sizeof(token_path), "%s/token", dir);
    pc_test_write_file(token_path, "not-a-real-token\n", 17);
    snprintf(missing_path, sizeof(missing_path), "%s/no-such-file", dir);
    snprintf(key_path, sizeof(key_path), "%s/k.key", dir);
    snprintf(pub_path, sizeof(pub_path), "%s/k.pub", dir);

    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    assert_true(listen_fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(listen_fd, 64), 0);
    socklen_t len = sizeof(sa);
    assert_int_equal(getsockname(listen_fd, (struct sockaddr *)&sa, &len), 0);
    snprintf(listen_url, sizeof(listen_url), "http://127.0.0.1:%d", ntohs(sa.sin_port));

    /* The key pair the key commands name, made by the CLI itself. */
    static run_result r;
    run(ARGS("keygen", "--out", "@DIR", "--name", "k"), &r);
    if (r.rc != 0)
        fail_msg("keygen: exit %d: %s%s", r.rc, r.out, r.err);
    assert_int_equal(r.connections, 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (listen_fd >= 0)
        close(listen_fd);
    pc_test_rm_rf(dir);
    return 0;
}

/* Every command, with arguments that are right. */
typedef struct cmd_case {
    const char *words;      /* "key rotate" */
    const char *args[10];   /* the whole command line, right */
    int positionals;        /* how many of the last args are positional (before options) */
    const char *foreign[3]; /* an option another command takes, with its value */
    bool offline;
} cmd_case;

static const cmd_case cases[] = {
    {"keygen", {"keygen", "--out", "@DIR", "--name", "k2"}, 0, {"--wait"}, true},
    /* PATH is optional (none: the active version): "missing TENANT" is
     * tested below. */
    {"deploy", {"deploy", "app", "@LUA"}, 0, {"--tenant", "app"}, false},
    {"versions", {"versions", "app"}, 1, {"--wait"}, false},
    /* VERSION is optional: "missing TENANT" is tested below. */
    {"rollback", {"rollback", "app", "1"}, 0, {"--entrypoint", "main.lua"}, false},
    {"delete", {"delete", "app"}, 1, {"--runtime", "lua"}, false},
    {"status", {"status", "app"}, 0, {"--timeout", "5"}, false}, /* TENANT is optional */
    {"rollout", {"rollout", "app", "1"}, 2, {"--out", "@DIR"}, false},
    {"health", {"health", "app", "2", "--baseline", "1"}, 2, {"--wait"}, false},
    {"fleet", {"fleet"}, 0, {"--wait"}, false},
    {"cluster", {"cluster"}, 0, {"--fraction", "0.5"}, false},
    {"cluster add",
     {"cluster", "add", "2", "127.0.0.1:9", "http://127.0.0.1:9"},
     3,
     {"--wait"},
     false},
    {"cluster remove", {"cluster", "remove", "2"}, 1, {"--name", "x"}, false},
    {"token create", {"token", "create", "--tenant", "app"}, 0, {"--wait"}, false},
    {"token list", {"token", "list"}, 0, {"--tenant", "app"}, false},
    {"token revoke", {"token", "revoke", "0123456789abcdef"}, 1, {"--root-key", "@PUB"}, false},
    {"agent enroll", {"agent", "enroll", "edge-1", "@PUB"}, 2, {"--wait"}, false},
    {"agent list", {"agent", "list"}, 0, {"--replaces", "0123456789abcdef"}, false},
    {"agent revoke", {"agent", "revoke", "edge-1"}, 1, {"--authorization", "@PUB"}, false},
    {"key list", {"key", "list"}, 0, {"--wait"}, false},
    {"key rotate", {"key", "rotate", "@PUB"}, 1, {"--tenant", "app"}, false},
    {"key authorize",
     {"key", "authorize", "@KEY", "@PUB", "--replaces", "0123456789abcdef"},
     2,
     {"--json"},
     true},
};
#define N_CASES (sizeof(cases) / sizeof(cases[0]))

static int count(const char *const *a)
{
    int n = 0;
    while (a[n] != NULL)
        n++;
    return n;
}

/* args + more (NULL-terminated) into out. */
static void join(const char *const *args, const char *const *more, const char **out)
{
    int n = 0;
    for (int i = 0; args[i] != NULL; i++)
        out[n++] = args[i];
    for (int i = 0; more != NULL && more[i] != NULL; i++)
        out[n++] = more[i];
    out[n] = NULL;
    assert_true(n <= MAX_ARGV);
}

/* Whether the case's command changes something (a write: it cannot tell
 * whether a request that got no answer was done). */
static bool writes(const cmd_case *k)
{
    static const char *const words[] = {
        "deploy",       "rollback",     "delete",       "cluster add",  "cluster remove",
        "token create", "token revoke", "agent enroll", "agent revoke", "key rotate"};
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (strcmp(k->words, words[i]) == 0)
            return true;
    return false;
}

/* The right command lines work (so the cases below fail for the one thing
 * each changes): an online command connects to the controller, an
 * offline one succeeds without connecting. The listener closes the
 * connection without an answer: a read fails (exit 1), a write may have
 * been done (exit 7). This also shows the listener sees what is sent. */
static void test_right_command_lines_reach_the_controller(void **state)
{
    (void)state;
    static run_result r;
    for (size_t i = 0; i < N_CASES; i++) {
        run(cases[i].args, &r);
        int want_rc = cases[i].offline ? 0 : writes(&cases[i]) ? 7 : 1;
        bool sent = r.connections > 0;
        if (r.rc != want_rc || sent == cases[i].offline)
            fail_msg("popcast %s: exit %d, %d connection(s)\nstdout: %s\nstderr: %s",
                     cases[i].words, r.rc, r.connections, r.out, r.err);
    }
}

/* For every command: an unknown option, an option of another command, an
 * argument too many, an argument too few, a flag given a value, an option
 * given twice. */
static void test_wrong_command_lines_send_nothing(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_CASES; i++) {
        const cmd_case *k = &cases[i];
        const char *line[MAX_ARGV + 1];
        join(k->args, ARGS("--bogus"), line);
        expect_usage(k->words, "unknown option --bogus", line);
        join(k->args, k->foreign, line);
        char want[64];
        snprintf(want, sizeof(want), "%s is not an option of %s", k->foreign[0], k->words);
        expect_usage(k->words, want, line);
        join(k->args, ARGS("extra"), line);
        expect_usage(k->words, "unexpected argument 'extra'", line);
        join(k->args, ARGS("--json=yes"), line);
        expect_usage(k->words, NULL, line);
        if (k->positionals > 0) {
            /* Drop the last positional argument. */
            int n = count(k->args), words = strchr(k->words, ' ') ? 2 : 1;
            int last = words + k->positionals - 1;
            int m = 0;
            for (int a = 0; a < n; a++)
                if (a != last)
                    line[m++] = k->args[a];
            line[m] = NULL;
            expect_usage(k->words, "missing ", line);
        }
    }
    expect_usage("rollback", "missing TENANT", ARGS("rollback"));
    expect_usage("deploy", "missing TENANT", ARGS("deploy"));
    /* An option given twice, a value missing, a value that is an option. */
    expect_usage("deploy", "--runtime is given twice",
                 ARGS("deploy", "app", "@LUA", "--runtime", "lua", "--runtime", "lua"));
    expect_usage("versions", "--controller needs a value (URL)",
                 ARGS("versions", "app", "--controller"));
    expect_usage("versions", "--token-file needs a value",
                 ARGS("versions", "app", "--token-file", "--json"));
    /* Commands and subcommands that do not exist. */
    expect_usage("", "unknown command 'bogus'", ARGS("bogus"));
    expect_usage("", "unknown command '--json'", ARGS("--json", "status"));
    expect_usage("key", "needs a subcommand: list, rotate, authorize", ARGS("key"));
    expect_usage("token", "unknown subcommand 'bogus'", ARGS("token", "bogus"));
    expect_usage("cluster", "unexpected argument 'bogus'", ARGS("cluster", "bogus", "1"));
}

/* Values: each checked before anything is sent. */
static void test_bad_values_send_nothing(void **state)
{
    (void)state;
    /* Tenant names. */
    /* ("-" is a tenant name: [a-z0-9-]{1,63}.) */
    const char *bad_tenants[] = {
        "App",
        "a_b",
        "",
        "a b",
        "a/b",
        "\xc3\xa9",
        "a234567890123456789012345678901234567890123456789012345678901234"};
    for (size_t i = 0; i < sizeof(bad_tenants) / sizeof(bad_tenants[0]); i++) {
        const char *t = bad_tenants[i];
        expect_usage("deploy", "is not a tenant name", ARGS("deploy", t, "@LUA"));
        expect_usage("versions", "is not a tenant name", ARGS("versions", t));
        expect_usage("rollback", "is not a tenant name", ARGS("rollback", t, "1"));
        expect_usage("delete", "is not a tenant name", ARGS("delete", t, "--wait"));
        expect_usage("status", "is not a tenant name", ARGS("status", t));
        expect_usage("rollout", "is not a tenant name", ARGS("rollout", t, "1"));
        expect_usage("token create", "is not a tenant name",
                     ARGS("token", "create", "--tenant", t));
    }
    /* Numbers. */
    const char *bad_numbers[] = {
        "0", "-1", "abc", "1.5", "1x", " 1", "+1", "", "99999999999999999999"};
    for (size_t i = 0; i < sizeof(bad_numbers) / sizeof(bad_numbers[0]); i++) {
        const char *v = bad_numbers[i];
        expect_usage("rollback", "is not a version number", ARGS("rollback", "app", v));
        expect_usage("rollout", "is not a version number", ARGS("rollout", "app", v, "--wait"));
        expect_usage("health", "is not a version number", ARGS("health", "app", v));
        expect_usage("health", "is not a version number",
                     ARGS("health", "app", "2", "--baseline", v));
        expect_usage("health", "must be a count from 1 to 1000000000",
                     ARGS("health", "app", "2", "--min-requests", v));
        expect_usage("cluster add", "is not a node id",
                     ARGS("cluster", "add", v, "127.0.0.1:9", "http://127.0.0.1:9"));
        expect_usage("cluster remove", "is not a node id", ARGS("cluster", "remove", v));
    }
    /* A baseline is below the version judged. */
    expect_usage("health", "--baseline 2 is not below VERSION 2",
                 ARGS("health", "app", "2", "--baseline", "2"));
    expect_usage("health", "--baseline 9 is not below VERSION 2",
                 ARGS("health", "app", "2", "--baseline", "9"));
    /* --timeout and --fraction, for each command that waits; neither
     * without --wait. The write must not happen first. */
    const char *bad_timeouts[] = {"0", "-5", "abc", "86401", "1.5", ""};
    const char *bad_fractions[] = {"0", "-0.5", "1.5", "abc", "nan", "inf", ""};
    const char *waiters[][4] = {{"deploy", "app", "@LUA"},
                                {"rollback", "app", "1"},
                                {"delete", "app"},
                                {"rollout", "app", "1"}};
    for (size_t w = 0; w < 4; w++) {
        const char *line[MAX_ARGV + 1];
        for (size_t i = 0; i < sizeof(bad_timeouts) / sizeof(bad_timeouts[0]); i++) {
            join(waiters[w], ARGS("--wait", "--timeout", bad_timeouts[i]), line);
            expect_usage(waiters[w][0], "--timeout must be whole seconds from 1 to 86400", line);
        }
        for (size_t i = 0; i < sizeof(bad_fractions) / sizeof(bad_fractions[0]); i++) {
            join(waiters[w], ARGS("--wait", "--fraction", bad_fractions[i]), line);
            expect_usage(waiters[w][0], "--fraction must be a number in (0, 1]", line);
        }
        join(waiters[w], ARGS("--timeout", "5"), line);
        expect_usage(waiters[w][0], "--timeout only applies with --wait", line);
        join(waiters[w], ARGS("--fraction", "0.5"), line);
        expect_usage(waiters[w][0], "--fraction only applies with --wait", line);
    }
    /* Files that cannot be read, directories where files belong. */
    expect_usage("deploy", "cannot read", ARGS("deploy", "app", "@MISSING"));
    expect_usage("key rotate", "cannot read", ARGS("key", "rotate", "@MISSING"));
    expect_usage("key rotate", "is a directory", ARGS("key", "rotate", "@DIR"));
    expect_usage("key rotate", "cannot read",
                 ARGS("key", "rotate", "@PUB", "--root-key", "@MISSING"));
    expect_usage("key rotate", "cannot read",
                 ARGS("key", "rotate", "@PUB", "--authorization", "@MISSING"));
    expect_usage("agent enroll", "cannot read", ARGS("agent", "enroll", "edge-1", "@MISSING"));
    expect_usage("key authorize", "cannot read",
                 ARGS("key", "authorize", "@MISSING", "@PUB", "--replaces", "0123456789abcdef"));
    expect_usage("fleet", "cannot read", ARGS("fleet", "--token-file", "@MISSING"));
    expect_usage("fleet", "cannot read", ARGS("fleet", "--ca-file", "@MISSING"));
    expect_usage("keygen", "is not a directory", ARGS("keygen", "--out", "@LUA"));
    expect_usage("keygen", "cannot write in", ARGS("keygen", "--out", "@MISSING"));
    /* Other values. */
    expect_usage("deploy", "is not a runtime name",
                 ARGS("deploy", "app", "@LUA", "--runtime", "Lua"));
    expect_usage("deploy", "is not a path inside a bundle",
                 ARGS("deploy", "app", "@LUA", "--entrypoint", "../main.lua"));
    expect_usage("keygen", "is not a key name", ARGS("keygen", "--out", "@DIR", "--name", "a/b"));
    expect_usage("token create", "is not a token name",
                 ARGS("token", "create", "--tenant", "app", "--name", "no spaces"));
    expect_usage("token create", "--tenant app is given twice",
                 ARGS("token", "create", "--tenant", "app", "--tenant", "app"));
    expect_usage("token create", "missing --tenant TENANT", ARGS("token", "create"));
    expect_usage("token revoke", "is not a token id", ARGS("token", "revoke", "ABCDEF0123456789"));
    expect_usage("agent revoke", "is not an id", ARGS("agent", "revoke", "edge 1"));
    expect_usage("key authorize", "missing --replaces KEY_ID",
                 ARGS("key", "authorize", "@KEY", "@PUB"));
    expect_usage("key authorize", "is not a key id",
                 ARGS("key", "authorize", "@KEY", "@PUB", "--replaces", "0123"));
    expect_usage("key rotate", "give --root-key or --authorization, not both",
                 ARGS("key", "rotate", "@PUB", "--root-key", "@PUB", "--authorization", "@PUB"));
    expect_usage("cluster add", "is not HOST:PORT",
                 ARGS("cluster", "add", "2", "127.0.0.1", "http://127.0.0.1:9"));
    expect_usage("cluster add", "is not an http:// or https:// URL",
                 ARGS("cluster", "add", "2", "127.0.0.1:9", "tcp://127.0.0.1:9"));
    expect_usage("status", "is not an http:// or https:// URL",
                 ARGS("status", "--controller", "127.0.0.1:7070"));
    expect_usage("status", "needs a value", ARGS("status", "--token="));
    expect_usage("completion", "must be bash or zsh", ARGS("completion", "fish"));
    expect_usage("deploy", "--idempotency-key must be 1 to 64 of",
                 ARGS("deploy", "app", "@LUA", "--idempotency-key", "a/b"));
    expect_usage("versions", "--idempotency-key is not an option of versions",
                 ARGS("versions", "app", "--idempotency-key", "k1"));
}

/* The connection settings from the environment are checked like the
 * options, before anything is sent. */
static void test_bad_environment_sends_nothing(void **state)
{
    (void)state;
    expect_usage_env("fleet", "POPCAST_CONTROLLER 'nowhere' is not an http:// or https:// URL",
                     ARGS("fleet"), ARGS("POPCAST_CONTROLLER=nowhere"));
    expect_usage_env("fleet", "POPCAST_TOKEN_FILE: cannot read", ARGS("fleet"),
                     ARGS("POPCAST_TOKEN_FILE=@MISSING"));
    expect_usage_env("fleet", "POPCAST_CA_FILE: cannot read", ARGS("fleet"),
                     ARGS("POPCAST_CA_FILE=@MISSING"));
    expect_usage_env("fleet", "give --ca-file",
                     ARGS("fleet", "--controller", "https://127.0.0.1:9"), NULL);
    /* A CA file that is not a certificate. */
    expect_usage_env("fleet", NULL, ARGS("fleet", "--controller", "https://127.0.0.1:9"),
                     ARGS("POPCAST_CA_FILE=@LUA"));
    /* The options win over the environment: a bad variable that an
     * option replaces is not used. */
    static run_result r;
    run_env(ARGS("fleet", "--controller", "@LISTENER"), ARGS("POPCAST_CONTROLLER=nowhere"), &r);
    assert_int_equal(r.rc, 1);
    assert_true(r.connections > 0);
}

static void expect_help(const char *const *args, const char *first_line)
{
    static run_result r;
    char cmd[256];
    describe(args, cmd, sizeof(cmd));
    run(args, &r);
    if (r.rc != 0 || r.connections != 0 || r.err[0] != '\0' ||
        strncmp(r.out, first_line, strlen(first_line)) != 0)
        fail_msg("popcast %s: exit %d, %d connection(s)\nstdout: %s\nstderr: %s\n(want exit 0 and "
                 "stdout starting with '%s')",
                 cmd, r.rc, r.connections, r.out, r.err, first_line);
}

static void test_help_and_version(void **state)
{
    (void)state;
    expect_help(ARGS("--help"), "usage: popcast COMMAND");
    expect_help(ARGS("-h"), "usage: popcast COMMAND");
    expect_help(ARGS("help"), "usage: popcast COMMAND");
    for (size_t i = 0; i < N_CASES; i++) {
        const cmd_case *k = &cases[i];
        char first[128];
        snprintf(first, sizeof(first), "usage: popcast %s", k->words);
        const char *line[MAX_ARGV + 1];
        /* --help wins over anything else on the line, even wrong things. */
        join(k->args, ARGS("--help"), line);
        expect_help(line, first);
        join(k->args, ARGS("--bogus", "-h"), line);
        expect_help(line, first);
        /* popcast help WORDS */
        const char *words[4] = {"help", k->args[0], NULL, NULL};
        if (strchr(k->words, ' ') != NULL)
            words[2] = k->args[1];
        expect_help(words, first);
    }
    /* A group's help shows each of its subcommands. */
    static run_result r;
    const char *const *group[] = {ARGS("key", "--help"), ARGS("help", "key")};
    for (size_t i = 0; i < 2; i++) {
        run(group[i], &r);
        assert_int_equal(r.rc, 0);
        assert_int_equal(strncmp(r.out, "usage: popcast key list", 23), 0);
        assert_non_null(strstr(r.out, "usage: popcast key rotate NEXT_PUBKEY_FILE"));
        assert_non_null(strstr(r.out, "--root-key"));
        assert_non_null(strstr(r.out, "usage: popcast key authorize ROOT_SECRET_KEY_FILE "
                                      "NEXT_PUBKEY_FILE --replaces KEY_ID"));
    }
    expect_usage("", "unknown command 'bogus'", ARGS("help", "bogus"));
    expect_usage("help", "unexpected argument 'x'", ARGS("help", "deploy", "x"));
    expect_usage("key", "unknown subcommand 'bogus'", ARGS("help", "key", "bogus"));
    expect_usage("", "--version takes no arguments", ARGS("--version", "x"));
    /* A command's help names exactly its options. */
    run(ARGS("versions", "--help"), &r);
    assert_int_equal(r.rc, 0);
    assert_non_null(strstr(r.out, "--json"));
    assert_null(strstr(r.out, "--wait"));
    run(ARGS("deploy", "--help"), &r);
    assert_non_null(strstr(r.out, "--timeout SECONDS"));
    assert_non_null(strstr(r.out, "--controller URL"));
    /* The top-level usage documents the exit codes. */
    run(ARGS("--help"), &r);
    assert_non_null(strstr(r.out, "3 an agent refused"));
    assert_non_null(strstr(r.out, "5 no agents"));
    /* No command at all: the usage, on stderr, exit 2. */
    run(ARGS(NULL), &r);
    assert_int_equal(r.rc, 2);
    assert_non_null(strstr(r.err, "usage: popcast COMMAND"));
    assert_int_equal(r.connections, 0);

    /* --version: the project's version, from CMakeLists.txt. */
    size_t len = 0;
    char *cmake = pc_test_source_file("CMakeLists.txt", &len);
    assert_non_null(cmake);
    const char *at = strstr(cmake, "project(popcast VERSION ");
    assert_non_null(at);
    at += strlen("project(popcast VERSION ");
    char want[64];
    snprintf(want, sizeof(want), "popcast %.*s\n", (int)strcspn(at, " )"), at);
    free(cmake);
    run(ARGS("--version"), &r);
    assert_int_equal(r.rc, 0);
    assert_string_equal(r.out, want);
    assert_string_equal(r.err, "");
    assert_int_equal(r.connections, 0);
}

/* The controller's count of API requests (each GET /metrics counts
 * itself). */
static uint64_t api_requests(pc_test_env *env, pc_test_controller *c)
{
    pc_http_result r;
    assert_int_equal(pc_test_api(env, c, "GET", "/metrics", NULL, NULL, 0, &r), 200);
    const char *line = strstr((const char *)r.body, "\npopcast_api_requests_total ");
    assert_non_null(line);
    uint64_t n = strtoull(line + strlen("\npopcast_api_requests_total "), NULL, 10);
    pc_http_result_free(&r);
    return n;
}

static json_t *api_json(pc_test_env *env, pc_test_controller *c, const char *path)
{
    pc_http_result r;
    int status = pc_test_api(env, c, "GET", path, NULL, NULL, 0, &r);
    if (status != 200)
        fail_msg("GET %s: %d", path, status);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    assert_non_null(doc);
    return doc;
}

/* Against a real controller: wrong command lines (among them the one
 * that used to delete first and complain after) change nothing and are
 * not even counted as requests. */
static void test_real_controller_untouched(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "keep me");
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "keep", src), 1);

    uint64_t before = api_requests(&env, &ctl);
    const char *const *lines[] = {
        ARGS("delete", "keep", "--wait", "--timeout", "0"),
        ARGS("delete", "keep", "--wait", "--fraction", "2"),
        ARGS("delete", "keep", "--timeout", "5"),
        ARGS("deploy", "keep", "@LUA", "--wait", "--timeout", "-1"),
        ARGS("deploy", "keep", "@LUA", "--wait", "--fraction", "0"),
        ARGS("rollback", "keep", "1", "--wait", "--timeout", "abc"),
        ARGS("rollback", "keep", "1", "--wait", "--fraction", "1.01"),
        ARGS("deploy", "keep", "@LUA", "--replaces", "0123456789abcdef"),
        ARGS("token", "create", "--tenant", "keep", "--tenant", "Bad"),
        ARGS("key", "rotate", "@PUB", "--root-key", "@PUB", "--authorization", "@PUB"),
        ARGS("cluster", "remove", "0"),
        ARGS("agent", "enroll", "edge-1", "@MISSING"),
    };
    char out[4096];
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        const char *line[MAX_ARGV + 1];
        int n = 0;
        for (int a = 0; lines[i][a] != NULL; a++)
            line[n++] = substitute(lines[i][a]);
        line[n] = NULL;
        int rc = pc_test_cli(&env, &ctl, line, out, sizeof(out));
        if (rc != 2 || strstr(out, "see 'popcast ") == NULL)
            fail_msg("%s %s: exit %d: %s", line[0], line[1], rc, out);
    }
    /* One request since: the metrics read itself. */
    assert_int_equal(api_requests(&env, &ctl), before + 1);
    json_t *t = api_json(&env, &ctl, "/v1/tenants/keep");
    assert_false(json_is_true(json_object_get(t, "deleted")));
    assert_int_equal(json_integer_value(json_object_get(t, "active_version")), 1);
    assert_int_equal(json_array_size(json_object_get(t, "versions")), 1);
    json_decref(t);
    json_t *tokens = api_json(&env, &ctl, "/v1/tokens");
    assert_int_equal(json_array_size(json_object_get(tokens, "tokens")), 0);
    json_decref(tokens);

    /* The right line does what it says. */
    const char *del[] = {"delete", "keep", NULL};
    int rc = pc_test_cli(&env, &ctl, del, out, sizeof(out));
    if (rc != 0 || strstr(out, "deleted keep at version 2") == NULL)
        fail_msg("delete: exit %d: %s", rc, out);

    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

static bool agent_reports(pc_test_env *env, pc_test_controller *c, const char *id)
{
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (pc_test_now_ms() < deadline) {
        json_t *fleet = api_json(env, c, "/v1/fleet");
        size_t i;
        json_t *a;
        bool found = false;
        json_array_foreach(json_object_get(fleet, "agents"), i, a)
        {
            if (strcmp(json_string_value(json_object_get(a, "agent_id")), id) == 0 &&
                !json_is_true(json_object_get(a, "gone")))
                found = true;
        }
        json_decref(fleet);
        if (found)
            return true;
        pc_test_sleep_ms(100);
    }
    return false;
}

static void write_lua(const char *path, const char *src)
{
    pc_test_write_file(path, src, strlen(src));
}

/* --wait's exit codes: 5 with no agent, 0 live, 3 nacked, 4 timed out; 1
 * when the request fails. */
static void test_wait_exit_codes(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    /* Agents stay counted however long the stopped one is silent. */
    const char *cflags[] = {"--gone-after-ms", "3600000", NULL};
    pc_test_controller_start(&env, &ctl, cflags);
    char good[400], bad[400], out[8192], src[256];
    snprintf(good, sizeof(good), "%s/good.lua", env.root);
    snprintf(bad, sizeof(bad), "%s/bad.lua", env.root);
    pc_test_lua_hello(src, sizeof(src), "good");
    write_lua(good, src);
    write_lua(bad, "error('boom at top level')\nreturn function() end\n");

    /* No agent reports to this controller: 5, after the deploy. */
    const char *deploy_good[] = {"deploy", "app",       good, "--direct",
                                 "--wait", "--timeout", "1",  NULL};
    int rc = pc_test_cli(&env, &ctl, deploy_good, out, sizeof(out));
    if (rc != 5 || strstr(out, "deployed app version 1") == NULL ||
        strstr(out, "timeout: no agent reports to this controller") == NULL)
        fail_msg("deploy --wait with no agent: exit %d:\n%s", rc, out);

    pc_test_agent agent = {0};
    pc_test_agent_start_for(&env, &agent, "edge-1", &ctl, NULL);
    assert_true(agent_reports(&env, &ctl, "edge-1"));
    const char *rollout1[] = {"rollout", "app", "1", "--wait", "--timeout", "60", NULL};
    rc = pc_test_cli(&env, &ctl, rollout1, out, sizeof(out));
    if (rc != 0 || strstr(out, "live: app v1 is live on 1/1 agents") == NULL)
        fail_msg("rollout --wait of a live version: exit %d:\n%s", rc, out);

    /* A top-level Lua error: the agent nacks, 3. */
    const char *deploy_bad[] = {"deploy", "app",       bad,  "--direct",
                                "--wait", "--timeout", "60", NULL};
    rc = pc_test_cli(&env, &ctl, deploy_bad, out, sizeof(out));
    if (rc != 3 || strstr(out, "refused: app v2 was nacked by 1 agent(s)") == NULL ||
        strstr(out, "boom at top level") == NULL)
        fail_msg("deploy --wait of a bad bundle: exit %d:\n%s", rc, out);
    const char *rollout2[] = {"rollout", "app", "2", "--wait", "--json", NULL};
    rc = pc_test_cli(&env, &ctl, rollout2, out, sizeof(out));
    json_t *doc = json_loads(out, 0, NULL);
    if (rc != 3 || doc == NULL)
        fail_msg("rollout --wait --json of a nacked version: exit %d:\n%s", rc, out);
    assert_string_equal(json_string_value(json_object_get(doc, "wait")), "nacked");
    json_decref(doc);

    /* The agent is frozen: it stays counted but cannot apply; 4. */
    assert_int_equal(kill(agent.proc->pid, SIGSTOP), 0);
    rc = pc_test_cli(&env, &ctl, deploy_good, out, sizeof(out));
    assert_int_equal(kill(agent.proc->pid, SIGCONT), 0);
    if (rc != 4 || strstr(out, "timeout: app v3 is not live everywhere after 1 s") == NULL ||
        strstr(out, "edge-1") == NULL)
        fail_msg("deploy --wait with a frozen agent: exit %d:\n%s", rc, out);
    /* A longer wait on a frozen agent keeps saying whom it waits for. */
    assert_int_equal(kill(agent.proc->pid, SIGSTOP), 0);
    const char *deploy_long[] = {"deploy", "app",       good, "--direct",
                                 "--wait", "--timeout", "9",  NULL};
    rc = pc_test_cli(&env, &ctl, deploy_long, out, sizeof(out));
    assert_int_equal(kill(agent.proc->pid, SIGCONT), 0);
    if (rc != 4 || strstr(out, "still waiting: app v4 live on 0 of 1 agents (") == NULL ||
        strstr(out, "not yet: edge-1 (pop ") == NULL || strstr(out, "last report ") == NULL)
        fail_msg("deploy --wait with a frozen agent for 9 s: exit %d:\n%s", rc, out);
    /* Thawed, it catches up. */
    const char *rollout3[] = {"rollout", "app", "4", "--wait", "--timeout", "60", NULL};
    rc = pc_test_cli(&env, &ctl, rollout3, out, sizeof(out));
    if (rc != 0 || strstr(out, "live: app v4") == NULL)
        fail_msg("rollout --wait after thawing: exit %d:\n%s", rc, out);

    /* A request that fails: HTTP 404, 1. */
    const char *versions[] = {"versions", "nosuch", NULL};
    rc = pc_test_cli(&env, &ctl, versions, out, sizeof(out));
    if (rc != 1 || strstr(out, "HTTP 404") == NULL)
        fail_msg("versions of an unknown tenant: exit %d:\n%s", rc, out);
    const char *rollout9[] = {"rollout", "app", "9", "--wait", NULL};
    rc = pc_test_cli(&env, &ctl, rollout9, out, sizeof(out));
    if (rc != 1 || strstr(out, "HTTP 404") == NULL)
        fail_msg("rollout --wait of an unknown version: exit %d:\n%s", rc, out);

    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

/* No controller where the URL points: 1. */
static void test_unreachable_controller(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", pc_test_free_port());
    static run_result r;
    run(ARGS("status", "--controller", url), &r);
    if (r.rc != 1 || r.err[0] == '\0')
        fail_msg("status against nothing: exit %d\n%s%s", r.rc, r.out, r.err);
}

/* Bash completion (docs/cli.md "Shell completion"): the script popcast
 * prints, sourced in bash, completes commands, subcommands and the
 * options of the command being typed. */
static void complete_in_bash(const char *words, const char *want)
{
    const char *cli = getenv("POPCAST_CLI_BIN");
    assert_non_null(cli);
    char script[4096], out_path[400];
    snprintf(out_path, sizeof(out_path), "%s/completion.out", dir);
    /* words: what was typed after popcast; the last one is completed. */
    snprintf(script, sizeof(script),
             "source <('%s' completion bash) || exit 9\n"
             "COMP_WORDS=('%s' %s); COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n"
             "_popcast\n"
             "for w in \"${COMPREPLY[@]}\"; do printf '%%s,' \"$w\"; done > '%s'\n",
             cli, cli, words, out_path);
    char script_path[400];
    snprintf(script_path, sizeof(script_path), "%s/completion.sh", dir);
    pc_test_write_file(script_path, script, strlen(script));
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "bash '%s'", script_path);
    assert_int_equal(system(cmd), 0);
    size_t len = 0;
    char *got = pc_test_read_file(out_path, &len);
    if (strcmp(got, want) != 0)
        fail_msg("completing popcast %s: got '%s', wanted '%s'", words, got, want);
    free(got);
}

/* The zsh script, run by zsh with the completion system's compadd and
 * _files stood in for (they only exist inside a completion widget): it
 * must ask popcast with the right words and offer what it answers, or
 * fall back to file names. Both ways of loading it: sourced (it
 * registers itself with compdef) and autoloaded from $fpath. */
static void complete_in_zsh(const char *words, const char *want)
{
    const char *cli = getenv("POPCAST_CLI_BIN");
    assert_non_null(cli);
    for (int autoload = 0; autoload < 2; autoload++) {
        char script[4096], out_path[400], fn_dir[400];
        snprintf(out_path, sizeof(out_path), "%s/completion-zsh.out", dir);
        snprintf(fn_dir, sizeof(fn_dir), "%s/zfunc", dir);
        snprintf(script, sizeof(script),
                 "registered=0\n"
                 "compdef() { [[ $1 == _popcast && $2 == popcast ]] && registered=1 }\n"
                 "compadd() { [[ $1 == -Q ]] && shift; [[ $1 == -a ]] && print -rl -- "
                 "\"${(@P)2}\" }\n"
                 "_files() { print -r -- _files }\n"
                 "if (( %d )); then\n"
                 "  mkdir -p '%s' && '%s' completion zsh > '%s/_popcast' || exit 9\n"
                 "  fpath=('%s' $fpath); autoload -Uz _popcast\n"
                 "else\n"
                 "  source <('%s' completion zsh) || exit 9\n"
                 "  (( registered )) || exit 8\n"
                 "fi\n"
                 "words=('%s' %s); CURRENT=${#words}\n"
                 "_popcast | while read -r w; do printf '%%s,' \"$w\"; done > '%s'\n",
                 autoload, fn_dir, cli, fn_dir, fn_dir, cli, cli, words, out_path);
        char script_path[400];
        snprintf(script_path, sizeof(script_path), "%s/completion.zsh", dir);
        pc_test_write_file(script_path, script, strlen(script));
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "zsh -f '%s'", script_path);
        int rc = system(cmd);
        if (rc != 0)
            fail_msg("zsh (%s) completing popcast %s: exit status %d",
                     autoload ? "autoloaded" : "sourced", words, rc);
        size_t len = 0;
        char *got = pc_test_read_file(out_path, &len);
        if (strcmp(got, want) != 0)
            fail_msg("zsh (%s) completing popcast %s: got '%s', wanted '%s'",
                     autoload ? "autoloaded" : "sourced", words, got, want);
        free(got);
    }
}

static void test_zsh_completion(void **state)
{
    (void)state;
    complete_in_zsh("de", "deploy,deployments,delete,");
    complete_in_zsh("key ''", "list,rotate,authorize,");
    complete_in_zsh("deploy app ./x --idem", "--idempotency-key,");
    complete_in_zsh("status --retry", "--retry-for,");
    complete_in_zsh("versions app --wa", "_files,");
    complete_in_zsh("deploy app ./x --timeout ''", "_files,");
    complete_in_zsh("completion ''", "bash,zsh,");
}

static void test_bash_completion(void **state)
{
    (void)state;
    complete_in_bash("de", "deploy,deployments,delete,");
    complete_in_bash("key ''", "list,rotate,authorize,");
    complete_in_bash("cluster a", "add,");
    complete_in_bash("deploy app ./x --wa", "--wait,");
    complete_in_bash("rollout app 1 --fr", "--fraction,");
    complete_in_bash("status --retry", "--retry-for,");
    /* An option another command takes is not offered. */
    complete_in_bash("versions app --wa", "");
    /* After an option that takes a value: nothing (the shell's files). */
    complete_in_bash("deploy app ./x --timeout ''", "");
    complete_in_bash("completion ''", "bash,zsh,");
    complete_in_bash("nosuch --", "");
}

/* Several controllers and retries (docs/cli.md): a write goes to the
 * next controller when one refuses the connection, waits out a 429 and
 * is sent again, and is made once either way; --retry-for 0 tries once. */
static void test_failover_and_retries(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    /* One admin write per second: the second deploy in a row gets 429. */
    const char *limits[] = {"--admin-write-rate", "1", "--admin-write-burst", "1", NULL};
    pc_test_controller_start(&env, &ctl, limits);
    char dead[64];
    snprintf(dead, sizeof(dead), "http://127.0.0.1:%d", pc_test_free_port());
    char out[4096];
    /* The first controller is down: the second takes it. */
    const char *first[] = {"deploy", "twice", lua_path, "--direct", "--controller", dead, NULL};
    int rc = pc_test_cli(&env, &ctl, first, out, sizeof(out));
    if (rc != 0 || strstr(out, "trying the next controller") == NULL)
        fail_msg("deploy with the first controller down: exit %d\n%s", rc, out);
    /* At once again: over the rate, retried after Retry-After. */
    const char *second[] = {"deploy", "twice", lua_path, "--direct", NULL};
    rc = pc_test_cli(&env, &ctl, second, out, sizeof(out));
    if (rc != 0 || strstr(out, "answered 429") == NULL)
        fail_msg("deploy over the rate: exit %d\n%s", rc, out);
    /* Each made exactly one version. */
    json_t *v = pc_test_controller_json(&env, &ctl, "/v1/tenants/twice/versions");
    assert_non_null(v);
    assert_int_equal(json_array_size(json_object_get(v, "versions")), 2);
    json_decref(v);
    /* --retry-for 0: one try, against nothing, fails at once. */
    const char *once[] = {"status", "--retry-for", "0", "--controller", dead, NULL};
    pc_test_controller nowhere = ctl;
    snprintf(nowhere.api_url, sizeof(nowhere.api_url), "%s", dead);
    rc = pc_test_cli(&env, &nowhere, once, out, sizeof(out));
    if (rc != 1 || strstr(out, "trying") != NULL)
        fail_msg("--retry-for 0 against nothing: exit %d\n%s", rc, out);
    /* Out of range: a usage error, nothing sent. */
    const char *bad[] = {"status", "--retry-for", "3601", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, bad, out, sizeof(out)), 2);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_right_command_lines_reach_the_controller),
        cmocka_unit_test(test_wrong_command_lines_send_nothing),
        cmocka_unit_test(test_bad_values_send_nothing),
        cmocka_unit_test(test_bad_environment_sends_nothing),
        cmocka_unit_test(test_help_and_version),
        cmocka_unit_test(test_unreachable_controller),
        cmocka_unit_test(test_real_controller_untouched),
        cmocka_unit_test(test_wait_exit_codes),
        cmocka_unit_test(test_failover_and_retries),
        cmocka_unit_test(test_bash_completion),
        cmocka_unit_test(test_zsh_completion),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
