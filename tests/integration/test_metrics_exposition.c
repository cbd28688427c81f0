/* test_metrics_exposition.c - what the three daemons expose on /metrics
 * (docs/operations.md "Metrics"): text that `promtool check metrics`
 * passes, a HELP and a TYPE for every family, every counter present at 0
 * before its first event, and the latency histograms counting what
 * happened (commit on the controller; apply and deploy-to-live on the
 * agent). promtool comes from Debian's prometheus package (tests/run.sh
 * unpacks it); without it this test fails rather than skips. */
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
#include "http_client.h"

static pc_test_env env;

static int setup(void **state)
{
    (void)state;
    pc_test_init();
    pc_test_env_init(&env);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pc_test_env_cleanup(&env);
    return 0;
}

static char *scrape(const char *base)
{
    pc_http_result r;
    pc_err err;
    if (pc_http_call(base, "GET", "/metrics", NULL, NULL, 0, 10000, &r, &err) != PC_OK)
        fail_msg("GET %s/metrics: %s", base, err.msg);
    assert_int_equal(r.status, 200);
    char *text = strdup((const char *)r.body);
    pc_http_result_free(&r);
    assert_non_null(text);
    return text;
}

/* promtool check metrics must pass the text, saying nothing. */
static void promtool_passes(const char *what, const char *text)
{
    const char *promtool = getenv("POPCAST_PROMTOOL");
    if (promtool == NULL || promtool[0] == '\0' || strstr(promtool, "NOTFOUND") != NULL)
        fail_msg("promtool not found: tests/run.sh unpacks it from Debian's prometheus package");
    char dir[400], in[512], out[512], cmd[2048];
    pc_test_tmpdir(dir, sizeof(dir), "promtool");
    snprintf(in, sizeof(in), "%s/metrics.txt", dir);
    snprintf(out, sizeof(out), "%s/promtool.out", dir);
    pc_test_write_file(in, text, strlen(text));
    snprintf(cmd, sizeof(cmd), "'%s' check metrics < '%s' > '%s' 2>&1", promtool, in, out);
    int status = system(cmd);
    size_t len = 0;
    char *said = pc_test_read_file(out, &len);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || len != 0)
        fail_msg("promtool check metrics on %s: status %d:\n%s\n---- metrics ----\n%s", what,
                 status, said, text);
    free(said);
    unlink(in);
    unlink(out);
    rmdir(dir);
}

/* Every family named in a sample has TYPE and HELP lines, each once. */
static void every_family_described(const char *what, const char *text)
{
    char *copy = strdup(text);
    assert_non_null(copy);
    char *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#')
            continue;
        char family[256];
        size_t n = strcspn(line, "{ ");
        assert_true(n < sizeof(family));
        memcpy(family, line, n);
        family[n] = '\0';
        /* A histogram's samples belong to the name without the suffix. */
        char type_line[300], help_line[300];
        snprintf(type_line, sizeof(type_line), "# TYPE %s ", family);
        if (strstr(text, type_line) == NULL) {
            static const char *suffixes[] = {"_bucket", "_sum", "_count"};
            for (size_t i = 0; i < 3; i++) {
                size_t fl = strlen(family), sl = strlen(suffixes[i]);
                if (fl > sl && strcmp(family + fl - sl, suffixes[i]) == 0) {
                    family[fl - sl] = '\0';
                    break;
                }
            }
            snprintf(type_line, sizeof(type_line), "# TYPE %s histogram\n", family);
        }
        snprintf(help_line, sizeof(help_line), "# HELP %s ", family);
        const char *type_at = strstr(text, type_line);
        const char *help_at = strstr(text, help_line);
        if (type_at == NULL || help_at == NULL)
            fail_msg("%s: family %s has no %s line", what, family, type_at ? "HELP" : "TYPE");
        if (strstr(type_at + 1, type_line) != NULL)
            fail_msg("%s: family %s is described twice", what, family);
    }
    free(copy);
}

/* The value of one exact sample line "series value". */
static double sample(const char *text, const char *series)
{
    char needle[300];
    snprintf(needle, sizeof(needle), "\n%s ", series);
    const char *at = strstr(text, needle);
    if (at == NULL)
        fail_msg("no sample %s in:\n%s", series, text);
    return strtod(at + strlen(needle), NULL);
}

static void test_exposition(void **state)
{
    (void)state;
    pc_test_controller c;
    memset(&c, 0, sizeof(c));
    pc_test_controller_start(&env, &c, NULL);
    pc_test_agent a;
    memset(&a, 0, sizeof(a));
    pc_test_agent_start_for(&env, &a, "edge-0", &c, NULL);
    pc_test_relay r;
    memset(&r, 0, sizeof(r));
    const char *subs[] = {c.pub_url, NULL};
    const char *syncs[] = {c.sync_url, NULL};
    pc_test_relay_start(&env, &r, "relay-m", "pop-a", subs, syncs, NULL);

    /* Before anything happened: every counter already there, at 0. */
    char *ctl = scrape(c.api_url);
    promtool_passes("controller", ctl);
    every_family_described("controller", ctl);
    assert_true(sample(ctl, "popcast_controller_changes_total") == 0);
    assert_true(sample(ctl, "popcast_controller_changes_failed_total") == 0);
    /* Commits may have happened: the agent's key, bound on first use. */
    double commits = sample(ctl, "popcast_controller_commit_seconds_count");
    assert_true(sample(ctl, "popcast_status_refused_total{reason=\"bad_signature\"}") == 0);
    assert_true(sample(ctl, "popcast_status_refused_total{reason=\"replayed\"}") == 0);
    assert_true(sample(ctl, "popcast_raft_leader") == 1);
    assert_true(sample(ctl, "popcast_raft_term") >= 1);
    assert_non_null(strstr(ctl, "\npopcast_build_info{daemon=\"controller\",version=\""));
    free(ctl);
    char *agent = scrape(a.admin_url);
    promtool_passes("agent", agent);
    every_family_described("agent", agent);
    assert_true(sample(agent, "popcast_agent_apply_seconds_count") == 0);
    assert_true(sample(agent, "popcast_agent_deploy_to_live_seconds_count") == 0);
    assert_true(sample(agent, "popcast_agent_key_rotations_total") == 0);
    assert_non_null(strstr(agent, "# HELP popcast_agent_nacks_total "));
    assert_non_null(strstr(agent, "\npopcast_build_info{daemon=\"agent\",version=\""));
    free(agent);
    char *relay = scrape(r.admin_url);
    promtool_passes("relay", relay);
    every_family_described("relay", relay);
    assert_non_null(strstr(relay, "\npopcast_build_info{daemon=\"relay\",version=\""));
    free(relay);

    /* One deploy, live: the histograms count it. */
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "hi");
    uint64_t v = pc_test_deploy_lua(&env, &c, "acme", src);
    pc_test_wait_live(&a, "acme", v);
    ctl = scrape(c.api_url);
    promtool_passes("controller after a deploy", ctl);
    every_family_described("controller after a deploy", ctl);
    assert_true(sample(ctl, "popcast_controller_changes_total") == 1);
    assert_true(sample(ctl, "popcast_controller_commit_seconds_count") >= commits + 1);
    assert_true(sample(ctl, "popcast_controller_commit_seconds_bucket{le=\"+Inf\"}") ==
                sample(ctl, "popcast_controller_commit_seconds_count"));
    assert_true(sample(ctl, "popcast_controller_commit_seconds_sum") > 0);
    free(ctl);
    agent = scrape(a.admin_url);
    promtool_passes("agent after a deploy", agent);
    every_family_described("agent after a deploy", agent);
    assert_true(sample(agent, "popcast_agent_apply_seconds_count") >= 1);
    assert_true(sample(agent, "popcast_agent_deploy_to_live_seconds_count") == 1);
    free(agent);

    pc_test_relay_stop(&r);
    pc_test_agent_stop(&a);
    pc_test_controller_stop(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_exposition, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
