/* test_stages.c - a version goes live only where its target names
 * (docs/deployments.md), on real processes: agents outside a deploy's
 * target store it and keep serving the version before it, through a kill
 * -9; a STAGE widens it; an upload is live nowhere until staged; a
 * fraction names the agents every party computes; a stage of a version a
 * newer deploy overtook is refused; an agent that joins in the middle of
 * a deployment (a snapshot) serves exactly what its place in the plan
 * says (the version before the held one, outside the stage); and the
 * rollout view counts only the agents targeted. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "target.h"

#define N_AGENTS 4

static const char *const in_ams[] = {"--pop", "ams", NULL}, *const in_fra[] = {"--pop", "fra",
                                                                               NULL};

/* POST path with a Lua body (text/x-lua) or a JSON body; the answer's
 * status, and its document in *doc (NULL: not wanted). */
static int post(pc_test_env *env, pc_test_controller *ctl, const char *path, const char *ct,
                const char *body, json_t **doc)
{
    pc_http_result r;
    int status = pc_test_api(env, ctl, "POST", path, ct, body, strlen(body), &r);
    if (doc != NULL)
        *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    return status;
}

static uint64_t deploy_at(pc_test_env *env, pc_test_controller *ctl, const char *query,
                          const char *answer, uint64_t *seq)
{
    char path[256], src[128];
    snprintf(path, sizeof(path), "/v1/tenants/web/bundles%s", query);
    pc_test_lua_hello(src, sizeof(src), answer);
    json_t *doc = NULL;
    assert_int_equal(post(env, ctl, path, "text/x-lua", src, &doc), 201);
    uint64_t version = (uint64_t)json_integer_value(json_object_get(doc, "version"));
    *seq = (uint64_t)json_integer_value(json_object_get(doc, "seq"));
    json_decref(doc);
    return version;
}

static void wait_applied(pc_test_agent *a, uint64_t seq)
{
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (pc_test_agent_applied_seq(a) < seq) {
        if (pc_test_now_ms() > deadline)
            fail_msg("%s never applied seq %llu", a->id, (unsigned long long)seq);
        pc_test_sleep_ms(25);
    }
}

/* Waits until the agent applied seq, then checks what it serves of web
 * (0: nothing). Applied first, so a "still the old one" is a fact, not a
 * race. */
static void expect_serves(pc_test_agent *a, uint64_t seq, uint64_t version)
{
    wait_applied(a, seq);
    if (version != 0) {
        if (!pc_test_wait_version(a, "web", version, PC_TEST_CONVERGE_TIMEOUT_MS))
            fail_msg("%s does not serve web version %llu", a->id, (unsigned long long)version);
        return;
    }
    uint64_t got = 0;
    int status = pc_test_edge_get(a, "web", "/", &got, NULL, 0);
    if (status == 200)
        fail_msg("%s serves web version %llu, expected nothing", a->id, (unsigned long long)got);
}

static void expect_still(pc_test_agent *a, uint64_t seq, uint64_t version)
{
    expect_serves(a, seq, version);
    uint64_t got = 0;
    assert_int_equal(pc_test_edge_get(a, "web", "/", &got, NULL, 0), 200);
    if (got != version)
        fail_msg("%s serves web version %llu, expected %llu", a->id, (unsigned long long)got,
                 (unsigned long long)version);
}

/* The agent's own outcome of web's version ("live", "held", ...). */
static const char *outcome_on(pc_test_agent *a, uint64_t version, char *buf, size_t cap)
{
    json_t *st = pc_test_agent_status(a);
    assert_non_null(st);
    buf[0] = '\0';
    json_t *tenants = json_object_get(st, "tenants"), *t;
    size_t i, j;
    json_array_foreach(tenants, i, t)
    {
        if (strcmp(json_string_value(json_object_get(t, "tenant")), "web") != 0)
            continue;
        json_t *o;
        json_array_foreach(json_object_get(t, "outcomes"), j,
                           o) if (json_integer_value(json_object_get(o, "version")) ==
                                  (json_int_t)version)
            snprintf(buf, cap, "%s", json_string_value(json_object_get(o, "state")));
    }
    json_decref(st);
    return buf;
}

static json_t *rollout(pc_test_env *env, pc_test_controller *ctl, uint64_t version)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/tenants/web/versions/%llu/rollout?wait=20000",
             (unsigned long long)version);
    json_t *doc = pc_test_controller_json(env, ctl, path);
    assert_non_null(doc);
    return doc;
}

static json_int_t summary(json_t *doc, const char *key)
{
    return json_integer_value(json_object_get(json_object_get(doc, "summary"), key));
}

static void test_targets_and_stages(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agents[N_AGENTS + 2];
    memset(agents, 0, sizeof(agents));
    const char *ids[] = {"edge-0", "edge-1", "edge-2", "edge-3"};
    for (int i = 0; i < N_AGENTS; i++)
        pc_test_agent_start_for(&env, &agents[i], ids[i], &ctl, i < 2 ? in_ams : in_fra);
    uint64_t seq = 0;
    char buf[32];

    /* v1 everywhere, v2 to ams only. */
    assert_int_equal(deploy_at(&env, &ctl, "", "one", &seq), 1);
    for (int i = 0; i < N_AGENTS; i++)
        expect_serves(&agents[i], seq, 1);
    assert_int_equal(deploy_at(&env, &ctl, "?target_pops=ams", "two", &seq), 2);
    expect_serves(&agents[0], seq, 2);
    expect_serves(&agents[1], seq, 2);
    expect_still(&agents[2], seq, 1);
    expect_still(&agents[3], seq, 1);
    assert_string_equal(outcome_on(&agents[2], 2, buf, sizeof(buf)), "held");
    json_t *doc = rollout(&env, &ctl, 2);
    assert_string_equal(json_string_value(json_object_get(doc, "wait")), "complete");
    assert_int_equal(summary(doc, "total"), 2);
    assert_int_equal(summary(doc, "untargeted"), 2);
    assert_int_equal(summary(doc, "live"), 2);
    json_decref(doc);

    /* kill -9 of an agent holding v2: it comes back serving v1. */
    pc_proc_kill9(agents[2].proc);
    pc_proc_free(agents[2].proc);
    agents[2].proc = NULL;
    pc_test_agent_start_for(&env, &agents[2], "edge-2", &ctl, in_fra);
    expect_still(&agents[2], seq, 1);

    /* The stage to everyone, through the CLI, waiting for it. */
    char out[4096];
    const char *stage_all[] = {"stage", "web", "2", "--everyone", "--wait", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, stage_all, out, sizeof(out)), 0);
    uint64_t stage_seq = pc_test_controller_head(&env, &ctl);
    for (int i = 0; i < N_AGENTS; i++)
        expect_serves(&agents[i], stage_seq, 2);
    assert_string_equal(outcome_on(&agents[3], 2, buf, sizeof(buf)), "live");

    /* An upload is live nowhere; a fraction names the agents every party
     * computes (the same hash, here). */
    char dir[256], file[300];
    pc_test_tmpdir(dir, sizeof(dir), "bundle");
    snprintf(file, sizeof(file), "%s/main.lua", dir);
    char src[128];
    pc_test_lua_hello(src, sizeof(src), "three");
    pc_test_write_file(file, src, strlen(src));
    const char *upload[] = {"upload", "web", file, NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, upload, out, sizeof(out)), 0);
    seq = pc_test_controller_head(&env, &ctl);
    for (int i = 0; i < N_AGENTS; i++)
        expect_still(&agents[i], seq, 2);
    const char *half[] = {"stage", "web", "3", "--permille", "500", "--wait", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, half, out, sizeof(out)), 0);
    seq = pc_test_controller_head(&env, &ctl);
    int named = 0;
    uint64_t serving[N_AGENTS];
    for (int i = 0; i < N_AGENTS; i++) {
        bool in = pc_target_rank("web", 3, ids[i]) < 500;
        named += in;
        serving[i] = in ? 3 : 2;
        expect_still(&agents[i], seq, serving[i]);
    }
    doc = rollout(&env, &ctl, 3);
    assert_int_equal(summary(doc, "total"), named);
    assert_int_equal(summary(doc, "untargeted"), N_AGENTS - named);
    json_decref(doc);

    /* Joining in the middle of a deployment (a snapshot): v4 is uploaded
     * and staged to ams; a new ams agent serves it; a new fra agent never
     * does, and serves v2, the last version that went everywhere (the
     * snapshot carries it before v4). */
    assert_int_equal(deploy_at(&env, &ctl, "?hold=true", "four", &seq), 4);
    json_t *ans = NULL;
    assert_int_equal(post(&env, &ctl, "/v1/tenants/web/versions/4/stage", "application/json",
                          "{\"pops\":[\"ams\"],\"message\":\"canary\"}", &ans),
                     201);
    assert_string_equal(json_string_value(json_object_get(ans, "kind")), "stage");
    seq = (uint64_t)json_integer_value(json_object_get(ans, "seq"));
    json_decref(ans);
    expect_serves(&agents[0], seq, 4);
    expect_still(&agents[1], seq, 4);
    expect_still(&agents[2], seq, serving[2]);
    expect_still(&agents[3], seq, serving[3]);
    pc_test_agent_start_for(&env, &agents[4], "late-ams", &ctl, in_ams);
    pc_test_agent_start_for(&env, &agents[5], "late-fra", &ctl, in_fra);
    expect_serves(&agents[4], seq, 4);
    expect_still(&agents[5], seq, 2);
    assert_string_equal(outcome_on(&agents[5], 4, buf, sizeof(buf)), "held");
    assert_true(pc_test_agent_metric(&agents[5], "popcast_agent_snapshots_installed_total") == 1);
    assert_true(pc_test_agent_metric(&agents[4], "popcast_agent_snapshots_installed_total") == 1);

    /* A newer deploy overtakes v4: staging v4 now is refused, and nothing
     * changes. */
    assert_int_equal(deploy_at(&env, &ctl, "", "five", &seq), 5);
    assert_int_equal(post(&env, &ctl, "/v1/tenants/web/versions/4/stage", "application/json",
                          "{\"everyone\":true}", NULL),
                     409);
    assert_int_equal(pc_test_controller_head(&env, &ctl), seq);
    for (int i = 0; i < N_AGENTS + 2; i++)
        expect_serves(&agents[i], seq, 5);

    for (int i = 0; i < N_AGENTS + 2; i++)
        pc_test_agent_stop(&agents[i]);
    pc_test_controller_stop(&ctl);
    pc_test_rm_rf(dir);
    pc_test_env_cleanup(&env);
}

/* Malformed targets and stages are refused with 400 and make nothing. */
static void test_bad_targets(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    uint64_t seq = 0;
    assert_int_equal(deploy_at(&env, &ctl, "", "one", &seq), 1);
    char src[128];
    pc_test_lua_hello(src, sizeof(src), "x");
    const char *bad_queries[] = {
        "?target_pops=a%20b", "?target_permille=1001",      "?target_permille=-1",
        "?hold=yes",          "?hold=true&target_pops=ams", "?target_agents=,,",
        "?target_pops=",      "?target_pops=ams,,fra"};
    for (size_t i = 0; i < sizeof(bad_queries) / sizeof(bad_queries[0]); i++) {
        char path[128];
        snprintf(path, sizeof(path), "/v1/tenants/web/bundles%s", bad_queries[i]);
        int status = post(&env, &ctl, path, "text/x-lua", src, NULL);
        if (status != 400)
            fail_msg("%s: %d, expected 400", bad_queries[i], status);
    }
    /* 65 PoPs: past the limit. */
    char many[65 * 8 + 64] = "/v1/tenants/web/bundles?target_pops=";
    for (int i = 0; i < 65; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), "%sp%d", i ? "," : "", i);
    assert_int_equal(post(&env, &ctl, many, "text/x-lua", src, NULL), 400);
    const char *bad_stages[] = {"{}",
                                "{\"everyone\":false}",
                                "{\"everyone\":true,\"pops\":[\"ams\"]}",
                                "{\"pops\":\"ams\"}",
                                "{\"pops\":[1]}",
                                "{\"agents\":[\"a b\"]}",
                                "{\"permille\":1001}",
                                "{\"permille\":1.5}",
                                "{\"pops\":[],\"permille\":0}",
                                "{\"everyone\":true,\"extra\":1}",
                                "[]",
                                "not json"};
    for (size_t i = 0; i < sizeof(bad_stages) / sizeof(bad_stages[0]); i++) {
        int status = post(&env, &ctl, "/v1/tenants/web/versions/1/stage", "application/json",
                          bad_stages[i], NULL);
        if (status != 400)
            fail_msg("stage %s: %d, expected 400", bad_stages[i], status);
    }
    assert_int_equal(post(&env, &ctl, "/v1/tenants/web/versions/0/stage", "application/json",
                          "{\"everyone\":true}", NULL),
                     400);
    assert_int_equal(post(&env, &ctl, "/v1/tenants/nope/versions/1/stage", "application/json",
                          "{\"everyone\":true}", NULL),
                     404);
    assert_int_equal(pc_test_controller_head(&env, &ctl), seq);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

/* The version web's edge on a answers a request carrying header: value
 * (header NULL: none) with; 0 when it does not answer 200. */
static uint64_t version_for(pc_test_agent *a, const char *header, const char *value)
{
    const char *headers[] = {"X-Popcast-Tenant", "web", header, value, NULL};
    if (header == NULL)
        headers[2] = NULL;
    pc_http_result r;
    if (pc_http_call(a->edge_url, "GET", "/", headers, NULL, 0, 10000, &r, NULL) != PC_OK)
        return 0;
    const char *v = pc_http_result_header(&r, "X-Popcast-Version");
    uint64_t got = r.status == 200 && v ? strtoull(v, NULL, 10) : 0;
    pc_http_result_free(&r);
    return got;
}

/* Every one of n users (prefix0, prefix1, ...) lands where the split's
 * hash puts it; returns how many ran the new version. */
static int expect_split(pc_test_agent *a, const char *header, const char *prefix, int n,
                        unsigned permille, uint64_t old_v, uint64_t new_v)
{
    int on_new = 0;
    for (int i = 0; i < n; i++) {
        char value[64];
        snprintf(value, sizeof(value), "%s%d", prefix, i);
        bool in = pc_target_split_rank("web", new_v, value, strlen(value)) < permille;
        uint64_t got = version_for(a, header, value);
        if (got != (in ? new_v : old_v))
            fail_msg("%s=%s got version %llu, expected %llu", header, value,
                     (unsigned long long)got, (unsigned long long)(in ? new_v : old_v));
        on_new += in;
    }
    return on_new;
}

/* A stage that splits: on the agents it names, its share of the requests
 * (by a header's or a cookie's value, sticky) run the new version and the
 * rest the one before; the split survives a restart; a stage without a
 * split makes the version whole. */
static void test_traffic_split(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agents[2];
    memset(agents, 0, sizeof(agents));
    pc_test_agent_start_for(&env, &agents[0], "edge-0", &ctl, in_ams);
    pc_test_agent_start_for(&env, &agents[1], "edge-1", &ctl, in_fra);
    uint64_t seq = 0;
    assert_int_equal(deploy_at(&env, &ctl, "", "one", &seq), 1);
    assert_int_equal(deploy_at(&env, &ctl, "?hold=true", "two", &seq), 2);
    json_t *ans = NULL;
    assert_int_equal(post(&env, &ctl, "/v1/tenants/web/versions/2/stage", "application/json",
                          "{\"pops\":[\"ams\"],\"split_permille\":300,\"split_key\":\"x-user\"}",
                          &ans),
                     201);
    seq = (uint64_t)json_integer_value(json_object_get(ans, "seq"));
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(ans, "target"), "split_permille")), 300);
    json_decref(ans);
    wait_applied(&agents[0], seq); /* requests without the header may go either way */
    expect_still(&agents[1], seq, 1);
    /* 1000 users: each exactly where the hash puts it. */
    int on_new = expect_split(&agents[0], "x-user", "user-", 1000, 300, 1, 2);
    printf("split: %d of 1000 users on the new version (asked 300 per mille)\n", on_new);
    assert_true(on_new > 240 && on_new < 360); /* binomial(1000, 0.3): 5 sd */
    /* Sticky: the same user, the same version, every time. */
    for (int k = 0; k < 20; k++)
        expect_split(&agents[0], "x-user", "user-", 1, 300, 1, 2);
    /* Without the key: at random, both versions come up. */
    bool seen[3] = {false, false, false};
    for (int k = 0; k < 200 && !(seen[1] && seen[2]); k++) {
        uint64_t v = version_for(&agents[0], NULL, NULL);
        assert_true(v == 1 || v == 2);
        seen[v] = true;
    }
    assert_true(seen[1] && seen[2]);
    /* fra is not named: all of it stays on v1. */
    for (int k = 0; k < 50; k++)
        assert_int_equal(version_for(&agents[1], "x-user", "user-1"), 1);

    /* The agent and the rollout view say v2 runs a split there, live and
     * not superseded. */
    json_t *st = pc_test_agent_status(&agents[0]);
    json_t *web = json_array_get(json_object_get(st, "tenants"), 0);
    assert_int_equal(json_integer_value(json_object_get(web, "split_version")), 2);
    assert_int_equal(json_integer_value(json_object_get(web, "live_version")), 1);
    json_decref(st);
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (;;) {
        json_t *doc = pc_test_controller_json(&env, &ctl, "/v1/tenants/web/versions/2/rollout");
        json_t *a0 = json_array_get(json_object_get(doc, "agents"), 0);
        bool ok = strcmp(json_string_value(json_object_get(a0, "state")), "live") == 0 &&
                  json_is_false(json_object_get(a0, "superseded"));
        json_decref(doc);
        if (ok)
            break;
        if (pc_test_now_ms() > deadline)
            fail_msg("the rollout view never showed the split as live");
        pc_test_sleep_ms(50);
    }

    /* The split survives a restart of the agent. */
    pc_test_agent_stop(&agents[0]);
    pc_test_agent_start_for(&env, &agents[0], "edge-0", &ctl, in_ams);
    expect_split(&agents[0], "x-user", "user-", 200, 300, 1, 2);

    /* Another split, by a cookie. */
    assert_int_equal(post(&env, &ctl, "/v1/tenants/web/versions/2/stage", "application/json",
                          "{\"pops\":[\"ams\"],\"split_permille\":500,"
                          "\"split_key\":\"cookie:sid\"}",
                          &ans),
                     201);
    seq = (uint64_t)json_integer_value(json_object_get(ans, "seq"));
    json_decref(ans);
    wait_applied(&agents[0], seq);
    for (int i = 0; i < 100; i++) {
        char cookie[64], sid[32];
        snprintf(sid, sizeof(sid), "s%d", i);
        snprintf(cookie, sizeof(cookie), "theme=dark; sid=%s; x=1", sid);
        bool in = pc_target_split_rank("web", 2, sid, strlen(sid)) < 500;
        assert_int_equal(version_for(&agents[0], "Cookie", cookie), in ? 2 : 1);
    }

    /* A stage without a split: wholly v2, everywhere. */
    assert_int_equal(post(&env, &ctl, "/v1/tenants/web/versions/2/stage", "application/json",
                          "{\"everyone\":true}", &ans),
                     201);
    seq = (uint64_t)json_integer_value(json_object_get(ans, "seq"));
    json_decref(ans);
    expect_serves(&agents[0], seq, 2);
    expect_serves(&agents[1], seq, 2);
    for (int i = 0; i < 50; i++) {
        char value[32];
        snprintf(value, sizeof(value), "user-%d", i);
        assert_int_equal(version_for(&agents[0], "x-user", value), 2);
    }
    /* Malformed splits are refused. */
    const char *bad[] = {"{\"everyone\":true,\"split_permille\":300}",
                         "{\"everyone\":true,\"split_permille\":1000,\"split_key\":\"x\"}",
                         "{\"everyone\":true,\"split_permille\":30,\"split_key\":\"X-User\"}",
                         "{\"everyone\":true,\"split_permille\":30,\"split_key\":\"cookie:\"}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(
            post(&env, &ctl, "/v1/tenants/web/versions/2/stage", "application/json", bad[i], NULL),
            400);

    pc_test_agent_stop(&agents[0]);
    pc_test_agent_stop(&agents[1]);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_targets_and_stages),
        cmocka_unit_test(test_bad_targets),
        cmocka_unit_test(test_traffic_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
