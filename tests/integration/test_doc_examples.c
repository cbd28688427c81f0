/* test_doc_examples.c - the shell examples of README.md and
 * docs/operations.md run as written (issue 15: both of the old
 * operations.md examples failed as written).
 *
 * Every ```sh block in those documents carries a marker on the line
 * before it:
 *   <!-- example: run -->         the test runs it;
 *   <!-- example: not run: WHY --> it does not, and WHY says what checks
 *                                  it instead (another test, CI itself).
 * A block without a marker fails the test, so no example goes unseen.
 *
 * A document's run blocks go, in order, into one bash script (a later
 * block uses what an earlier one started), under set -euo pipefail, with
 * every background job (the daemons an example starts) stopped at the
 * end. Before running, only what cannot be shared on a test machine is
 * rewritten: the absolute paths /tmp/popcast and /backups move under a
 * fresh directory, /var/lib/popcast/controller becomes the by-hand
 * controller's data directory (so the backup example backs it up), the
 * fixed ports become free ones, and PATH finds this build's binaries. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

#define MARK_RUN     "<!-- example: run -->"
#define MARK_NOT_RUN "<!-- example: not run: "

typedef struct text {
    char *s;
    size_t len, cap;
} text;

static void text_add(text *t, const char *s, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        t->cap = (t->len + n + 1) * 2;
        t->s = realloc(t->s, t->cap);
        assert_non_null(t->s);
    }
    memcpy(t->s + t->len, s, n);
    t->len += n;
    t->s[t->len] = '\0';
}

static void text_addf(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_addf(text *t, const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof(buf));
    text_add(t, buf, (size_t)n);
}

/* s with every `from` replaced by `to` (a new string). */
static char *replace_all(const char *s, const char *from, const char *to)
{
    text out = {0};
    text_add(&out, "", 0);
    size_t flen = strlen(from);
    for (const char *at; (at = strstr(s, from)) != NULL; s = at + flen) {
        text_add(&out, s, (size_t)(at - s));
        text_add(&out, to, strlen(to));
    }
    text_add(&out, s, strlen(s));
    return out.s;
}

typedef struct found {
    int run, not_run;
} found;

/* Appends doc's run blocks to script; fails on a block without a marker. */
static found collect(const char *doc, text *script)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", getenv("POPCAST_SOURCE_DIR"), doc);
    size_t len = 0;
    char *all = pc_test_read_file(path, &len);
    found f = {0};
    char prev[512] = "";
    int line_no = 0;
    bool in_block = false, running = false;
    for (char *line = all, *end; line != NULL && *line != '\0'; line = end ? end + 1 : NULL) {
        end = strchr(line, '\n');
        if (end != NULL)
            *end = '\0';
        line_no++;
        if (in_block) {
            if (strncmp(line, "```", 3) == 0) {
                in_block = false;
                if (running)
                    text_addf(script, "echo '--- %s: example done'\n", doc);
            } else if (running) {
                text_addf(script, "%s\n", line);
            }
            continue;
        }
        if (strncmp(line, "```sh", 5) == 0) {
            in_block = true;
            running = strcmp(prev, MARK_RUN) == 0;
            if (running) {
                f.run++;
                text_addf(script, "echo '--- %s, the example at line %d'\n", doc, line_no);
            } else if (strncmp(prev, MARK_NOT_RUN, strlen(MARK_NOT_RUN)) == 0) {
                f.not_run++;
                const char *why = prev + strlen(MARK_NOT_RUN);
                const char *close = strstr(why, " -->");
                printf("%s:%d not run: %.*s\n", doc, line_no,
                       (int)(close ? close - why : (ptrdiff_t)strlen(why)), why);
            } else {
                fail_msg("%s:%d: a ```sh block without a marker before it (%s, or %s...)", doc,
                         line_no, MARK_RUN, MARK_NOT_RUN);
            }
        } else if (strncmp(line, "```", 3) == 0) {
            in_block = true; /* output, configuration: not a command */
            running = false;
        }
        if (line[0] != '\0') /* the marker may be followed by a blank line */
            snprintf(prev, sizeof(prev), "%s", line);
    }
    if (in_block)
        fail_msg("%s: a code block is not closed", doc);
    free(all);
    return f;
}

static void run_script(const char *doc, const char *body, const char *sandbox)
{
    /* Paths and ports the examples name, and what they become here. */
    char tmp_dir[400], backups[400], ctl_dir[450];
    snprintf(tmp_dir, sizeof(tmp_dir), "%s/tmp/popcast", sandbox);
    snprintf(backups, sizeof(backups), "%s/backups", sandbox);
    snprintf(ctl_dir, sizeof(ctl_dir), "%s/controller", tmp_dir);
    const char *fixed_ports[] = {":7070", ":7071", ":7072", ":7073", ":8080", ":9090"};
    /* In this order: each replacement holds none of the later patterns. */
    char *s = replace_all(body, "/tmp/popcast", tmp_dir);
    char *next = replace_all(s, "/var/lib/popcast/controller", ctl_dir);
    free(s);
    s = replace_all(next, "/backups", backups);
    free(next);
    for (size_t i = 0; i < sizeof(fixed_ports) / sizeof(fixed_ports[0]); i++) {
        char port[16];
        snprintf(port, sizeof(port), ":%d", pc_test_free_port());
        next = replace_all(s, fixed_ports[i], port);
        free(s);
        s = next;
    }

    char path_env[2048] = "";
    const char *bins[] = {"POPCAST_CONTROLLER_BIN", "POPCAST_AGENT_BIN", "POPCAST_RELAY_BIN",
                          "POPCAST_CLI_BIN"};
    for (size_t i = 0; i < sizeof(bins) / sizeof(bins[0]); i++) {
        const char *bin = getenv(bins[i]);
        assert_non_null(bin);
        const char *slash = strrchr(bin, '/');
        assert_non_null(slash);
        size_t used = strlen(path_env);
        snprintf(path_env + used, sizeof(path_env) - used, "%.*s:", (int)(slash - bin), bin);
    }
    text script = {0};
    text_addf(&script,
              "set -euo pipefail\n"
              "export PATH='%s'\"$PATH\"\n"
              "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n"
              "mkdir -p '%s'\n",
              path_env, backups);
    text_add(&script, s, strlen(s));
    free(s);

    char name[64], script_path[400], log_path[450];
    snprintf(name, sizeof(name), "%s", doc);
    for (char *c = name; *c; c++)
        if (*c == '/')
            *c = '_';
    snprintf(script_path, sizeof(script_path), "%s/%s.sh", sandbox, name);
    snprintf(log_path, sizeof(log_path), "%s.log", script_path);
    pc_test_write_file(script_path, script.s, script.len);
    free(script.s);
    char cmd[1200];
    snprintf(cmd, sizeof(cmd), "cd '%s' && timeout 300 bash '%s' > '%s' 2>&1",
             getenv("POPCAST_SOURCE_DIR"), script_path, log_path);
    int rc = system(cmd);
    size_t len = 0;
    char *log = pc_test_read_file(log_path, &len);
    if (rc != 0) {
        printf("%s", log);
        fail_msg("the examples of %s failed (status %d); script %s, its output above", doc, rc,
                 script_path);
    }
    printf("%s", log);
    free(log);
}

static void test_examples_run(void **state)
{
    (void)state;
    const char *docs[] = {"README.md", "docs/operations.md"};
    int ran = 0;
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        text script = {0};
        text_add(&script, "", 0);
        found f = collect(docs[i], &script);
        printf("%s: %d examples run, %d not run\n", docs[i], f.run, f.not_run);
        assert_true(f.run + f.not_run > 0); /* the documents have examples */
        if (f.run > 0) {
            char sandbox[256];
            pc_test_tmpdir(sandbox, sizeof(sandbox), "doc-examples");
            run_script(docs[i], script.s, sandbox);
            ran += f.run;
        }
        free(script.s);
    }
    /* Running by hand (two blocks) and the backup. */
    assert_true(ran >= 3);
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_examples_run),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
