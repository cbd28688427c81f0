/* test_signals.c - --version, and SIGHUP (docs/operations.md "Signals"):
 * every daemon
 * reads its configuration again and applies the log level and format (text
 * or JSON lines), says so in its
 * log, keeps running, and changes nothing when the configuration no
 * longer loads. (SIGHUP used to end a daemon at once.) */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "http_client.h"

static void write_config(const char *path, const char *text)
{
    pc_test_write_file(path, text, strlen(text));
}

/* A request the edge refuses before any tenant code (two Host headers):
 * logged at debug level only, before the answer is sent. */
static void send_refused_request(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    const char *req = "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
    assert_int_equal(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    char buf[512];
    assert_true(read(fd, buf, sizeof(buf)) > 0);
    assert_int_equal(memcmp(buf, "HTTP/1.1 400", 12), 0);
    close(fd);
}

/* The sequence every daemon goes through: reload as is, to debug (debug
 * lines appear), a broken file (nothing changes), back to info. */
static void exercise(pc_proc *p, const char *config)
{
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    pc_test_wait_log(p, "SIGHUP: configuration read again: log_level is info", 1);
    assert_true(pc_proc_alive(p));
    write_config(config, "{\"log_level\": \"debug\"}");
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    pc_test_wait_log(p, "SIGHUP: configuration read again: log_level is debug", 1);
    write_config(config, "{\"log_level\": ");
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    pc_test_wait_log(p, "SIGHUP: the configuration does not load", 1);
    write_config(config, "{\"log_level\": \"loud\"}");
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    pc_test_wait_log(p, "SIGHUP: log_level must be debug, info, warn or error: nothing changed", 1);
    write_config(config, "{\"log_level\": \"info\"}");
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    pc_test_wait_log(p, "SIGHUP: configuration read again: log_level is info", 2);
    assert_true(pc_proc_alive(p));
    /* JSON lines, then a format that does not exist, then text again. */
    write_config(config, "{\"log_level\": \"info\", \"log_format\": \"json\"}");
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    pc_test_wait_log(p, "\"level\":\"info\",\"component\":\"", 1);
    pc_test_wait_log(
        p, "\"msg\":\"SIGHUP: configuration read again: log_level is info, log_format json;", 1);
    write_config(config, "{\"log_format\": \"xml\"}");
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    pc_test_wait_log(p, "\"msg\":\"SIGHUP: log_format must be text or json: nothing changed\"", 1);
    write_config(config, "{\"log_level\": \"info\"}");
    assert_int_equal(kill(p->pid, SIGHUP), 0);
    pc_test_wait_log(p, "log_level is info, log_format text;", 3);
    /* Every line written as JSON is one JSON object with the four keys. */
    size_t len = 0;
    char *log = pc_test_read_file(p->log, &len);
    int objects = 0;
    char *save = NULL;
    for (char *line = strtok_r(log, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        if (line[0] != '{')
            continue;
        json_t *o = json_loads(line, 0, NULL);
        if (!json_is_object(o) || !json_is_string(json_object_get(o, "time")) ||
            !json_is_string(json_object_get(o, "level")) ||
            !json_is_string(json_object_get(o, "component")) ||
            !json_is_string(json_object_get(o, "msg")))
            fail_msg("%s: not a JSON log line: %s", p->name, line);
        json_decref(o);
        objects++;
    }
    free(log);
    assert_true(objects >= 2);
    assert_true(pc_proc_alive(p));
}

static void test_sighup_reloads_every_daemon(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    char config[400];
    snprintf(config, sizeof(config), "%s/daemon.json", env.root);
    write_config(config, "{\"log_level\": \"info\"}");
    const char *extra[] = {"--config", config, NULL};

    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, extra);
    exercise(ctl.proc, config);

    pc_test_agent agent = {0};
    const char *subs[] = {ctl.pub_url, NULL};
    const char *syncs[] = {ctl.sync_url, NULL};
    pc_test_agent_start(&env, &agent, "hup", subs, syncs, extra);
    exercise(agent.proc, config);
    /* The level really changes: a refused edge request is logged at
     * debug level only. */
    send_refused_request(agent.edge_port);
    write_config(config, "{\"log_level\": \"debug\"}");
    assert_int_equal(kill(agent.proc->pid, SIGHUP), 0);
    pc_test_wait_log(agent.proc, "log_level is debug", 2);
    send_refused_request(agent.edge_port);
    pc_test_wait_log(agent.proc, "refused a request: 400", 1);
    write_config(config, "{\"log_level\": \"info\"}");
    assert_int_equal(kill(agent.proc->pid, SIGHUP), 0);
    /* exercise() left three such lines (the JSON one says log_format json). */
    pc_test_wait_log(agent.proc, "log_level is info, log_format text;", 4);
    /* Answered: the edge logs a refusal before it answers, so had this one
     * been logged, it would be in the log by now. */
    send_refused_request(agent.edge_port);
    size_t len = 0;
    char *log = pc_test_read_file(agent.proc->log, &len);
    const char *first = strstr(log, "refused a request: 400");
    assert_non_null(first);
    assert_null(strstr(first + 1, "refused a request: 400"));
    free(log);

    pc_test_relay relay = {0};
    pc_test_relay_start(&env, &relay, "hup-relay", "pop-a", subs, syncs, extra);
    exercise(relay.proc, config);

    /* Still serving after all that: a deploy goes live. */
    uint64_t v = pc_test_deploy_lua(&env, &ctl, "app", "return function() return {body='x'} end");
    pc_test_wait_live(&agent, "app", v);

    pc_test_relay_stop(&relay);
    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

/* Every daemon answers --version with its name and the project's
 * version, exit 0, and starts nothing. */
static void test_daemons_print_their_version(void **state)
{
    (void)state;
    const char *bins[][2] = {{"POPCAST_CONTROLLER_BIN", "popcast-controller "},
                             {"POPCAST_AGENT_BIN", "popcast-agent "},
                             {"POPCAST_RELAY_BIN", "popcast-relay "}};
    for (size_t i = 0; i < 3; i++) {
        const char *bin = getenv(bins[i][0]);
        assert_non_null(bin);
        char cmd[600], out[256] = "";
        snprintf(cmd, sizeof(cmd), "'%s' --version", bin);
        FILE *f = popen(cmd, "r");
        assert_non_null(f);
        size_t n = fread(out, 1, sizeof(out) - 1, f);
        out[n] = '\0';
        assert_int_equal(pclose(f), 0);
        assert_int_equal(strncmp(out, bins[i][1], strlen(bins[i][1])), 0);
        /* NAME X.Y.Z and a newline. */
        const char *v = out + strlen(bins[i][1]);
        assert_true(v[0] >= '0' && v[0] <= '9');
        assert_non_null(strchr(v, '.'));
        assert_int_equal(out[strlen(out) - 1], '\n');
    }
}

static int status_with(pc_test_controller *c, const char *token)
{
    char auth[200];
    snprintf(auth, sizeof(auth), "Bearer %s", token);
    const char *headers[] = {"Authorization", auth, NULL};
    pc_http_result r;
    if (pc_http_call(c->api_url, "GET", "/v1/tenants", headers, NULL, 0, 10000, &r, NULL) != PC_OK)
        return 0;
    int status = r.status;
    pc_http_result_free(&r);
    return status;
}

/* SIGHUP reads the admin token file again: a new token replaces the old
 * at once; a file that does not hold a token changes nothing. */
static void test_sighup_replaces_admin_token(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    char old_token[80];
    snprintf(old_token, sizeof(old_token), "%s", env.token);
    assert_int_equal(status_with(&ctl, old_token), 200);

    const char *new_token = "0123456789abcdef0123456789abcdef-rotated";
    write_config(env.token_path, "0123456789abcdef0123456789abcdef-rotated\n");
    assert_int_equal(kill(ctl.proc->pid, SIGHUP), 0);
    pc_test_wait_log(ctl.proc, "SIGHUP: admin token replaced from ", 1);
    assert_int_equal(status_with(&ctl, old_token), 401);
    assert_int_equal(status_with(&ctl, new_token), 200);

    /* Too short to be a token: refused, the current one stays. */
    write_config(env.token_path, "short\n");
    assert_int_equal(kill(ctl.proc->pid, SIGHUP), 0);
    pc_test_wait_log(ctl.proc, "SIGHUP: admin token not read again (", 1);
    assert_int_equal(status_with(&ctl, new_token), 200);
    /* The same token again: said to be unchanged. */
    write_config(env.token_path, "0123456789abcdef0123456789abcdef-rotated\n");
    assert_int_equal(kill(ctl.proc->pid, SIGHUP), 0);
    pc_test_wait_log(ctl.proc, "SIGHUP: admin token in ", 1);
    assert_int_equal(status_with(&ctl, new_token), 200);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_daemons_print_their_version),
        cmocka_unit_test(test_sighup_reloads_every_daemon),
        cmocka_unit_test(test_sighup_replaces_admin_token),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
