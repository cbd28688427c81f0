/* test_deployments.c - staged deployments driven by the leader
 * (controller/deployer.h), on real processes: a healthy version passes
 * every stage of its plan (and the default plan, and --immediate); a
 * version failing 30 % of the requests the test drives at the canary is
 * halted and reverted there, and agents outside the canary never serve
 * it; a version that one PoP's agents cannot load halts the rollout with
 * the nack's reason; a leader killed with -9 in the middle of a
 * deployment leaves a record the next leader carries on from. Times to
 * 100 % and from the first bad answer to the revert are printed (a
 * benchmark's figures, never asserted). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

#define N_AGENTS 4

static const char *const fast_controller[] = {"--deploy-interval-ms", "100", "--deploy-bake-ms",
                                              "300", NULL};
static const char *const ams[] = {"--pop", "ams", "--traffic-interval-ms", "100", NULL},
                         *const fra[] = {"--pop", "fra", "--traffic-interval-ms", "100", NULL},
                         *const fra_small[] = {"--pop", "fra",          "--traffic-interval-ms",
                                               "100",   "--lua-memory", "1MiB",
                                               NULL};

/* A healthy handler answering its own text (each version's content
 * differs, as real ones do: the baseline is never "the current bundle"). */
static const char *healthy(const char *answer)
{
    static char src[8][128];
    static int next;
    char *out = src[next++ % 8];
    pc_test_lua_hello(out, sizeof(src[0]), answer);
    return out;
}
/* Fails whatever the test sends to /bad. */
static const char flaky[] = "return function(req)\n"
                            "  if req.path == '/bad' then error('boom') end\n"
                            "  return 'new'\n"
                            "end\n";
/* Takes 4 MiB when it loads: more than a 1 MiB agent allows. */
static const char big[] = "local blob = string.rep('x', 4 * 1024 * 1024)\n"
                          "return function(req) return #blob end\n";

static void start_agents(pc_test_env *env, pc_test_controller *ctl, pc_test_agent *agents,
                         const char *const *fra_flags)
{
    memset(agents, 0, N_AGENTS * sizeof(*agents));
    const char *ids[] = {"ams-0", "ams-1", "fra-0", "fra-1"};
    for (int i = 0; i < N_AGENTS; i++)
        pc_test_agent_start_for(env, &agents[i], ids[i], ctl, i < 2 ? ams : fra_flags);
}

static json_t *request(pc_test_env *env, pc_test_controller *ctl, const char *method,
                       const char *path, const char *ct, const char *body, int want)
{
    pc_http_result r;
    int status = pc_test_api(env, ctl, method, path, ct, body, body ? strlen(body) : 0, &r);
    if (status != want)
        fail_msg("%s %s: %d, expected %d: %.*s", method, path, status, want, (int)r.body_len,
                 (const char *)r.body);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    return doc;
}

static uint64_t upload(pc_test_env *env, pc_test_controller *ctl, const char *src)
{
    json_t *doc =
        request(env, ctl, "POST", "/v1/tenants/web/bundles?hold=true", "text/x-lua", src, 201);
    uint64_t v = (uint64_t)json_integer_value(json_object_get(doc, "version"));
    json_decref(doc);
    return v;
}

static json_int_t num(json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

static const char *text(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

static uint64_t start(pc_test_env *env, pc_test_controller *ctl, const char *body)
{
    json_t *doc =
        request(env, ctl, "POST", "/v1/tenants/web/deployments", "application/json", body, 201);
    assert_string_equal(text(doc, "state"), "running");
    uint64_t id = (uint64_t)num(doc, "id");
    json_decref(doc);
    return id;
}

/* Polls the deployment until its state is `state` (any other final state
 * fails the test); returns the record. */
static json_t *wait_state(pc_test_env *env, pc_test_controller *ctl, uint64_t id, const char *state)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/tenants/web/deployments/%llu", (unsigned long long)id);
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (;;) {
        json_t *doc = pc_test_controller_json(env, ctl, path);
        const char *now = doc ? text(doc, "state") : "";
        if (strcmp(now, state) == 0)
            return doc;
        bool final = strcmp(now, "running") != 0 && strcmp(now, "paused") != 0 &&
                     strcmp(now, "halted") != 0 && now[0] != '\0';
        if (final || pc_test_now_ms() > deadline)
            fail_msg("deployment %llu is %s, expected %s: %s", (unsigned long long)id, now, state,
                     doc ? json_dumps(doc, JSON_COMPACT) : "(no answer)");
        json_decref(doc);
        pc_test_sleep_ms(50);
    }
}

/* The events' names, space-separated ("started staged passed ..."). */
static void event_names(json_t *doc, char *out, size_t cap)
{
    out[0] = '\0';
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(doc, "events"), i, e)
    {
        size_t n = strlen(out);
        snprintf(out + n, cap - n, "%s%s", n ? " " : "", text(e, "what"));
    }
}

/* The detail of the first event named what. */
static const char *event_detail(json_t *doc, const char *what)
{
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(doc, "events"), i,
                       e) if (strcmp(text(e, "what"), what) == 0) return text(e, "detail");
    return "";
}

static void expect_serving(pc_test_agent *a, uint64_t version)
{
    if (!pc_test_wait_version(a, "web", version, PC_TEST_CONVERGE_TIMEOUT_MS))
        fail_msg("%s does not serve web version %llu", a->id, (unsigned long long)version);
}

/* The agent's outcome of web's version ("" when it has none). */
static void outcome_on(pc_test_agent *a, uint64_t version, char *out, size_t cap)
{
    json_t *st = pc_test_agent_status(a);
    out[0] = '\0';
    size_t i, j;
    json_t *t, *o;
    json_array_foreach(json_object_get(st, "tenants"), i, t)
    {
        if (strcmp(text(t, "tenant"), "web") != 0)
            continue;
        json_array_foreach(json_object_get(t, "outcomes"), j,
                           o) if (num(o, "version") == (json_int_t)version)
            snprintf(out, cap, "%s", text(o, "state"));
    }
    json_decref(st);
}

/* A controller and N_AGENTS agents (2 in ams, 2 in fra with fra_flags),
 * every one serving web version 1. */
/* Polls until the controller shows web's version live on every agent
 * (from their reports); fails after the converge timeout. */
static void wait_shown_live(pc_test_env *env, pc_test_controller *ctl, uint64_t version)
{
    char path[96];
    snprintf(path, sizeof(path), "/v1/tenants/web/versions/%llu/rollout",
             (unsigned long long)version);
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (;;) {
        json_t *doc = pc_test_controller_json(env, ctl, path);
        json_int_t live = num(json_object_get(doc, "summary"), "live");
        json_decref(doc);
        if (live == N_AGENTS)
            return;
        if (pc_test_now_ms() > deadline)
            fail_msg("the controller shows version %llu live on %lld of %d agents",
                     (unsigned long long)version, (long long)live, N_AGENTS);
        pc_test_sleep_ms(20);
    }
}

static void fleet_up(pc_test_env *env, pc_test_controller *ctl, pc_test_agent *agents,
                     const char *const *fra_flags)
{
    pc_test_env_init(env);
    memset(ctl, 0, sizeof(*ctl));
    pc_test_controller_start(env, ctl, fast_controller);
    start_agents(env, ctl, agents, fra_flags);
    assert_int_equal(pc_test_deploy_lua(env, ctl, "web", healthy("one")), 1);
    for (int i = 0; i < N_AGENTS; i++)
        expect_serving(&agents[i], 1);
    /* ... and the controller has it from all their reports: a
     * deployment's baseline is the last version it saw live everywhere. */
    wait_shown_live(env, ctl, 1);
}

static void fleet_down(pc_test_env *env, pc_test_controller *ctl, pc_test_agent *agents)
{
    for (int i = 0; i < N_AGENTS; i++)
        pc_test_agent_stop(&agents[i]);
    pc_test_controller_stop(ctl);
    pc_test_env_cleanup(env);
}

static void test_healthy_version_passes_every_stage(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_controller ctl;
    pc_test_agent agents[N_AGENTS];
    fleet_up(&env, &ctl, agents, fra);

    /* Two stages: the canary PoP, then everyone. */
    assert_int_equal(upload(&env, &ctl, healthy("two")), 2);
    int64_t t0 = pc_test_now_ms();
    uint64_t id = start(&env, &ctl,
                        "{\"plan\":[{\"pops\":[\"ams\"],\"bake_ms\":200,\"gate\":false},"
                        "{\"everyone\":true}],\"message\":\"two stages\"}");
    assert_int_equal(id, 1);
    json_t *doc = wait_state(&env, &ctl, id, "complete");
    char names[512];
    event_names(doc, names, sizeof(names));
    assert_string_equal(names, "started staged passed staged passed complete");
    assert_int_equal(num(doc, "baseline"), 1);
    json_decref(doc);
    for (int i = 0; i < N_AGENTS; i++)
        expect_serving(&agents[i], 2);
    int64_t two_stages = pc_test_now_ms() - t0;

    /* The default plan: canary PoP (ams, the first by name), 10 %, 50 %,
     * everyone; the gate has too few requests to judge, and says so. */
    assert_int_equal(upload(&env, &ctl, healthy("three")), 3);
    t0 = pc_test_now_ms();
    id = start(&env, &ctl, "{}");
    doc = wait_state(&env, &ctl, id, "complete");
    assert_int_equal(num(doc, "stages_total"), 4);
    event_names(doc, names, sizeof(names));
    assert_string_equal(names, "started staged passed staged passed staged passed staged passed "
                               "complete");
    assert_non_null(strstr(event_detail(doc, "passed"), "not judged"));
    json_t *first = json_array_get(json_object_get(doc, "plan"), 0);
    assert_string_equal(json_string_value(json_array_get(
                            json_object_get(json_object_get(first, "target"), "pops"), 0)),
                        "ams");
    json_decref(doc);
    for (int i = 0; i < N_AGENTS; i++)
        expect_serving(&agents[i], 3);
    int64_t default_plan = pc_test_now_ms() - t0;

    /* Immediate: one stage, everyone, recorded as such. */
    assert_int_equal(upload(&env, &ctl, healthy("four")), 4);
    t0 = pc_test_now_ms();
    id = start(&env, &ctl, "{\"immediate\":true}");
    doc = wait_state(&env, &ctl, id, "complete");
    assert_true(json_is_true(json_object_get(doc, "immediate")));
    json_decref(doc);
    for (int i = 0; i < N_AGENTS; i++)
        expect_serving(&agents[i], 4);
    int64_t immediate = pc_test_now_ms() - t0;
    printf("deployments: time to 100%% on %d agents: two stages (200 ms bake) %lld ms, default "
           "plan (300 ms bakes) %lld ms, immediate %lld ms (gate interval 100 ms)\n",
           N_AGENTS, (long long)two_stages, (long long)default_plan, (long long)immediate);

    /* A second deployment of a version that has one going is refused;
     * a deployment of a version that is not the active one too. */
    assert_int_equal(upload(&env, &ctl, healthy("five")), 5);
    id = start(&env, &ctl,
               "{\"plan\":[{\"pops\":[\"ams\"],\"bake_ms\":600000,\"gate\":false},"
               "{\"everyone\":true}]}");
    json_decref(
        request(&env, &ctl, "POST", "/v1/tenants/web/deployments", "application/json", "{}", 409));
    json_decref(request(&env, &ctl, "POST", "/v1/tenants/web/deployments", "application/json",
                        "{\"version\":4}", 409));
    /* Pause, resume, promote by hand past the long bake, and the list. */
    char path[128];
    snprintf(path, sizeof(path), "/v1/tenants/web/deployments/%llu/pause", (unsigned long long)id);
    doc = request(&env, &ctl, "POST", path, NULL, NULL, 200);
    assert_string_equal(text(doc, "state"), "paused");
    json_decref(doc);
    json_decref(request(&env, &ctl, "POST", path, NULL, NULL, 409));
    snprintf(path, sizeof(path), "/v1/tenants/web/deployments/%llu/resume", (unsigned long long)id);
    json_decref(request(&env, &ctl, "POST", path, NULL, NULL, 200));
    snprintf(path, sizeof(path), "/v1/tenants/web/deployments/%llu", (unsigned long long)id);
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while ((doc = pc_test_controller_json(&env, &ctl, path)) != NULL &&
           num(doc, "stage_seq") == 0 && pc_test_now_ms() < deadline) {
        json_decref(doc);
        pc_test_sleep_ms(50);
    }
    json_decref(doc);
    snprintf(path, sizeof(path), "/v1/tenants/web/deployments/%llu/promote",
             (unsigned long long)id);
    json_decref(request(&env, &ctl, "POST", path, NULL, NULL, 200));
    doc = wait_state(&env, &ctl, id, "complete");
    assert_non_null(strstr(event_detail(doc, "promoted"), "by admin"));
    json_decref(doc);
    doc = request(&env, &ctl, "GET", "/v1/tenants/web/deployments", NULL, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(doc, "deployments")), 4);
    json_decref(doc);

    /* A stage that names none of the enrolled agents (a PoP with none)
     * has nothing to bake or judge: it passes, and says why. */
    assert_int_equal(upload(&env, &ctl, healthy("six")), 6);
    id = start(&env, &ctl,
               "{\"plan\":[{\"pops\":[\"nowhere\"],\"bake_ms\":600000},{\"everyone\":true}]}");
    doc = wait_state(&env, &ctl, id, "complete");
    assert_non_null(
        strstr(event_detail(doc, "passed"), "its target names none of the 4 enrolled agents"));
    json_decref(doc);
    for (int i = 0; i < N_AGENTS; i++)
        expect_serving(&agents[i], 6);

    fleet_down(&env, &ctl, agents);
}

static void test_failing_version_is_reverted_at_the_canary(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_controller ctl;
    pc_test_agent agents[N_AGENTS];
    fleet_up(&env, &ctl, agents, fra);
    assert_int_equal(upload(&env, &ctl, flaky), 2);
    uint64_t id = start(&env, &ctl,
                        "{\"plan\":[{\"pops\":[\"ams\"],\"bake_ms\":600000,\"min_requests\":50},"
                        "{\"everyone\":true}]}");
    expect_serving(&agents[0], 2);
    expect_serving(&agents[1], 2);
    /* Real traffic at the canary: 30 % of it fails. */
    int64_t first_bad = 0;
    for (int i = 0; i < 100; i++) {
        bool bad = i % 10 < 3;
        int status = pc_test_edge_get(&agents[i % 2], "web", bad ? "/bad" : "/", NULL, NULL, 0);
        if (bad && first_bad == 0)
            first_bad = pc_test_now_ms();
        assert_int_equal(status, bad ? 502 : 200);
    }
    json_t *doc = wait_state(&env, &ctl, id, "reverted");
    const char *why = event_detail(doc, "failed");
    if (strstr(why, "health gate: error rate") == NULL ||
        strstr(why, "the error rate is above the gate") == NULL)
        fail_msg("failed: %s", json_dumps(doc, JSON_COMPACT));
    uint64_t revert = (uint64_t)num(doc, "revert_seq");
    assert_true(revert > 0);
    json_decref(doc);
    /* The revert is version 3, v1's content, live everywhere. */
    for (int i = 0; i < N_AGENTS; i++)
        expect_serving(&agents[i], 3);
    int64_t reverted = pc_test_now_ms() - first_bad;
    printf("deployments: from the first bad answer to the revert live on all %d agents: %lld ms "
           "(traffic interval 100 ms, gate interval 100 ms)\n",
           N_AGENTS, (long long)reverted);
    /* The fra agents never served v2: held there, to the end. */
    char state_buf[32];
    for (int i = 2; i < N_AGENTS; i++) {
        outcome_on(&agents[i], 2, state_buf, sizeof(state_buf));
        assert_string_equal(state_buf, "held");
    }
    doc = request(&env, &ctl, "GET", "/v1/tenants/web", NULL, NULL, 200);
    json_t *v3 = json_array_get(json_object_get(doc, "versions"), 2);
    assert_int_equal(num(v3, "rollback_of"), 1);
    /* v2 keeps its deployment's outcome in its history. */
    json_t *v2 = json_array_get(json_object_get(doc, "versions"), 1);
    json_t *dep = json_array_get(json_object_get(v2, "deployments"), 0);
    assert_int_equal(num(dep, "id"), (json_int_t)id);
    assert_string_equal(text(dep, "state"), "reverted");
    json_decref(doc);

    fleet_down(&env, &ctl, agents);
}

static void test_nack_on_one_pop_halts_the_rollout(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_controller ctl;
    pc_test_agent agents[N_AGENTS];
    fleet_up(&env, &ctl, agents, fra_small);
    assert_int_equal(upload(&env, &ctl, big), 2);
    uint64_t id = start(&env, &ctl,
                        "{\"plan\":[{\"pops\":[\"ams\"],\"gate\":false},"
                        "{\"pops\":[\"ams\",\"fra\"],\"gate\":false},{\"everyone\":true}]}");
    json_t *doc = wait_state(&env, &ctl, id, "reverted");
    const char *why = event_detail(doc, "failed");
    if (strstr(why, "nacked on 2 of 4 targeted agents") == NULL || strstr(why, "fra-") == NULL ||
        strstr(why, "limit_exceeded") == NULL)
        fail_msg("failed: %s", json_dumps(doc, JSON_COMPACT));
    assert_int_equal(json_array_get(json_object_get(doc, "events"), 0) != NULL, 1);
    json_decref(doc);
    for (int i = 0; i < N_AGENTS; i++)
        expect_serving(&agents[i], 3);

    fleet_down(&env, &ctl, agents);
}

/* Malformed deployments and operations are refused (400, or 404 for what
 * does not exist) and make nothing: no entry, no record. */
static void test_bad_deployments(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, fast_controller);
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "web", healthy("one")), 1);
    uint64_t head = pc_test_controller_head(&env, &ctl);
    const char *bad[] = {
        "not json",
        "[]",
        "{\"extra\":1}",
        "{\"version\":0}",
        "{\"version\":\"1\"}",
        "{\"plan\":\"fast\"}",
        "{\"plan\":[]}",
        "{\"plan\":[{\"everyone\":true},{\"everyone\":true},{\"everyone\":true},"
        "{\"everyone\":true},{\"everyone\":true},{\"everyone\":true},{\"everyone\":true},"
        "{\"everyone\":true},{\"everyone\":true}]}",
        "{\"plan\":[{}]}",
        "{\"plan\":[{\"pops\":[]}]}",
        "{\"plan\":[{\"everyone\":true,\"pops\":[\"ams\"]}]}",
        "{\"plan\":[{\"pops\":[\"a b\"]}]}",
        "{\"plan\":[{\"everyone\":true,\"bake_ms\":-1}]}",
        "{\"plan\":[{\"everyone\":true,\"bake_ms\":604800001}]}",
        "{\"plan\":[{\"everyone\":true,\"gate\":\"yes\"}]}",
        "{\"plan\":[{\"everyone\":true,\"split_permille\":100}]}",
        "{\"plan\":[{\"everyone\":true,\"what\":1}]}",
        "{\"immediate\":false}",
        "{\"immediate\":true,\"plan\":\"default\"}",
        "{\"message\":\"line\\nbreak\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        pc_http_result r;
        int status = pc_test_api(&env, &ctl, "POST", "/v1/tenants/web/deployments",
                                 "application/json", bad[i], strlen(bad[i]), &r);
        if (status != 400)
            fail_msg("%s: %d, expected 400: %.*s", bad[i], status, (int)r.body_len,
                     (const char *)r.body);
        pc_http_result_free(&r);
    }
    json_decref(
        request(&env, &ctl, "POST", "/v1/tenants/nope/deployments", "application/json", "{}", 404));
    json_decref(request(&env, &ctl, "GET", "/v1/tenants/web/deployments/0", NULL, NULL, 400));
    json_decref(request(&env, &ctl, "GET", "/v1/tenants/web/deployments/x", NULL, NULL, 400));
    json_decref(request(&env, &ctl, "GET", "/v1/tenants/web/deployments/7", NULL, NULL, 404));
    json_decref(
        request(&env, &ctl, "POST", "/v1/tenants/web/deployments/7/pause", NULL, NULL, 404));
    json_decref(
        request(&env, &ctl, "POST", "/v1/tenants/web/deployments/0/abort", NULL, NULL, 400));
    json_t *doc = request(&env, &ctl, "GET", "/v1/tenants/web/deployments", NULL, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(doc, "deployments")), 0);
    json_decref(doc);
    assert_int_equal(pc_test_controller_head(&env, &ctl), head);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

/* The operator's side: deploy --staged --wait follows the default plan to
 * the end (exit 0); a deployment aborted by hand is reverted and watch
 * says so (exit 8); list shows both; usage errors are refused before any
 * request. */
static void test_cli_deployments(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_controller ctl;
    pc_test_agent agents[N_AGENTS];
    fleet_up(&env, &ctl, agents, fra);
    char dir[256], file[300], out[8192];
    pc_test_tmpdir(dir, sizeof(dir), "bundle");
    snprintf(file, sizeof(file), "%s/main.lua", dir);
    const char *two = healthy("two");
    pc_test_write_file(file, two, strlen(two));
    /* A plain deploy is a staged deployment with the default plan. */
    const char *staged[] = {"deploy", "web", file, "--idempotency-key", "web-two", "--wait", NULL};
    if (pc_test_cli(&env, &ctl, staged, out, sizeof(out)) != 0)
        fail_msg("deploy: %s", out);
    assert_non_null(strstr(out, "uploaded web version 2 "));
    assert_non_null(strstr(out, "deployment 1 of web version 2 started: 4 stages"));
    assert_non_null(strstr(out, "[stage 4] complete"));
    for (int i = 0; i < N_AGENTS; i++)
        expect_serving(&agents[i], 2);
    /* The same command again (an answer lost, say): nothing new is made;
     * it follows the deployment the first run started. */
    uint64_t made = pc_test_controller_head(&env, &ctl);
    if (pc_test_cli(&env, &ctl, staged, out, sizeof(out)) != 0)
        fail_msg("deploy again with its key: %s", out);
    assert_non_null(strstr(out, "made before with this idempotency key"));
    assert_non_null(strstr(out, "deployment 1 of web version 2 was started by the first run"));
    assert_non_null(strstr(out, "deployment 1 of web version 2: complete"));
    assert_int_equal(pc_test_controller_head(&env, &ctl), made);
    const char *spelled_out[] = {"deploy",  "web",      file, "--idempotency-key",
                                 "web-two", "--staged", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, spelled_out, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "was started by the first run"));
    assert_int_equal(pc_test_controller_head(&env, &ctl), made);

    /* A plan from a file that never gets past its canary: abort it. */
    char plan[300];
    snprintf(plan, sizeof(plan), "%s/plan.json", dir);
    const char *plan_json = "[{\"pops\":[\"ams\"],\"bake_ms\":600000},{\"everyone\":true}]";
    pc_test_write_file(plan, plan_json, strlen(plan_json));
    const char *three = healthy("three");
    pc_test_write_file(file, three, strlen(three));
    const char *planned[] = {"deploy", "web", file, "--plan", plan, NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, planned, out, sizeof(out)), 0);
    expect_serving(&agents[0], 3);
    const char *abort_it[] = {"deployments", "abort", "web", "2", NULL};
    if (pc_test_cli(&env, &ctl, abort_it, out, sizeof(out)) != 0)
        fail_msg("abort: %s", out);
    const char *watch[] = {"deployments", "watch", "web", "2", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, watch, out, sizeof(out)), 8);
    assert_non_null(strstr(out, "aborted: by admin"));
    assert_non_null(strstr(out, "deployment 2 of web version 3: aborted"));
    for (int i = 0; i < N_AGENTS; i++)
        expect_serving(&agents[i], 4); /* the revert: v2's content as v4 */
    const char *list[] = {"deployments", "list", "web", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, list, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "complete"));
    assert_non_null(strstr(out, "aborted"));
    /* A stored version, deployed by number. */
    const char *five = healthy("five");
    pc_test_write_file(file, five, strlen(five));
    const char *up[] = {"upload", "web", file, NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, up, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "uploaded web version 5"));
    const char *stored_with_upload_flags[] = {"deploy", "web", "5", "--runtime", "lua", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, stored_with_upload_flags, out, sizeof(out)), 2);
    assert_non_null(strstr(out, "go with an upload (PATH), not a stored version"));
    const char *by_number[] = {"deploy", "web", "5", "--immediate", "--wait", NULL};
    if (pc_test_cli(&env, &ctl, by_number, out, sizeof(out)) != 0)
        fail_msg("deploy web 5: %s", out);
    assert_non_null(strstr(out, "deployment 3 of web version 5 started: 1 stage"));
    for (int i = 0; i < N_AGENTS; i++)
        expect_serving(&agents[i], 5);
    /* No version: the active one (an upload). */
    const char *six = healthy("six");
    pc_test_write_file(file, six, strlen(six));
    assert_int_equal(pc_test_cli(&env, &ctl, up, out, sizeof(out)), 0);
    const char *active[] = {"deploy", "web", "--immediate", "--wait", NULL};
    if (pc_test_cli(&env, &ctl, active, out, sizeof(out)) != 0)
        fail_msg("deploy web --immediate: %s", out);
    assert_non_null(strstr(out, "deployment 4 of web version 6 started: 1 stage"));
    for (int i = 0; i < N_AGENTS; i++)
        expect_serving(&agents[i], 6);
    /* Usage errors: nothing sent. */
    uint64_t head = pc_test_controller_head(&env, &ctl);
    const char *targeted[] = {"deploy", "web", "5", "--pop", "ams", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, targeted, out, sizeof(out)), 2);
    /* A plan file that is not a plan: refused before the upload. */
    const char *not_a_plan = "{\"pops\":[\"ams\"]}";
    pc_test_write_file(plan, not_a_plan, strlen(not_a_plan));
    const char *bad_plan[] = {"deploy", "web", file, "--plan", plan, NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, bad_plan, out, sizeof(out)), 2);
    assert_non_null(strstr(out, "is not a JSON array of 1 to 8 stage objects"));
    const char *both[] = {"deploy", "web", file, "--staged", "--pop", "ams", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, both, out, sizeof(out)), 2);
    const char *pop_alone[] = {"deploy", "web", file, "--pop", "ams", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, pop_alone, out, sizeof(out)), 2);
    assert_non_null(strstr(out, "target one --direct entry"));
    const char *direct_staged[] = {"deploy", "web", file, "--direct", "--immediate", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, direct_staged, out, sizeof(out)), 2);
    const char *direct_version[] = {"deploy", "web", "5", "--direct", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, direct_version, out, sizeof(out)), 2);
    const char *fraction[] = {"deploy", "web", file, "--wait", "--fraction", "0.5", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, fraction, out, sizeof(out)), 2);
    const char *bad_id[] = {"deployments", "show", "web", "0", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, bad_id, out, sizeof(out)), 2);
    assert_int_equal(pc_test_controller_head(&env, &ctl), head);

    pc_test_rm_rf(dir);
    fleet_down(&env, &ctl, agents);
}

/* A tenant's own default plan: what a deployment given no plan follows,
 * set, shown and cleared through the API and the CLI; bad plans and other
 * tenants' tokens change nothing. */
static void test_tenant_plan(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_controller ctl;
    pc_test_agent agents[N_AGENTS];
    fleet_up(&env, &ctl, agents, fra);
    json_t *doc = request(&env, &ctl, "GET", "/v1/tenants/web/plan", NULL, NULL, 200);
    assert_string_equal(text(doc, "source"), "controllers");
    assert_int_equal(json_array_size(json_object_get(doc, "plan")), 4);
    json_decref(doc);

    static const char *const bad[] = {
        "{}",
        "{\"plan\":[]}",
        "{\"plan\":\"default\"}",
        "{\"plan\":[{\"everyone\":true}],\"extra\":1}",
        "{\"plan\":[{\"pops\":[\"Not A Pop\"]}]}",
        "{\"plan\":[{\"everyone\":true,\"bake_ms\":-1}]}",
        "{\"plan\":[{\"everyone\":true,\"bake_ms\":604800001}]}",
        "{\"plan\":[{}]}",
        "{\"plan\":[1,2,3,4,5,6,7,8,9]}",
        "[",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        json_decref(
            request(&env, &ctl, "PUT", "/v1/tenants/web/plan", "application/json", bad[i], 400));
    /* Over the 64 KiB a JSON body may have: 413, from the length alone
     * (the head only is sent: a body too would race the server's close). */
    char head[512], answer[4096];
    snprintf(head, sizeof(head),
             "PUT /v1/tenants/web/plan HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
             "Content-Length: %d\r\n\r\n",
             env.token, 70 * 1024);
    pc_test_raw_head(&ctl, head, answer, sizeof(answer));
    if (strncmp(answer, "HTTP/1.1 413", 12) != 0 || strstr(answer, "\"too_large\"") == NULL)
        fail_msg("expected 413 too_large, got: %s", answer);
    doc = request(&env, &ctl, "GET", "/v1/tenants/web/plan", NULL, NULL, 200);
    assert_string_equal(text(doc, "source"), "controllers");
    json_decref(doc);

    const char *plan = "{\"plan\":[{\"pops\":[\"ams\"],\"bake_ms\":100,\"gate\":false},"
                       "{\"everyone\":true}]}";
    doc = request(&env, &ctl, "PUT", "/v1/tenants/web/plan", "application/json", plan, 200);
    assert_string_equal(text(doc, "source"), "tenant");
    assert_string_equal(text(doc, "author"), "admin");
    assert_int_equal(json_array_size(json_object_get(doc, "plan")), 2);
    json_decref(doc);

    /* Another tenant's token can neither read nor set it. */
    pc_http_result r;
    const char *req = "{\"tenants\": [\"other\"], \"name\": \"other-deployer\"}";
    assert_int_equal(
        pc_test_api(&env, &ctl, "POST", "/v1/tokens", "application/json", req, strlen(req), &r),
        201);
    json_t *tok = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    pc_test_env stranger = env;
    snprintf(stranger.token, sizeof(stranger.token), "%s", text(tok, "token"));
    json_decref(tok);
    int status = pc_test_api(&stranger, &ctl, "GET", "/v1/tenants/web/plan", NULL, NULL, 0, &r);
    pc_http_result_free(&r);
    assert_true(status == 403 || status == 404);
    status = pc_test_api(&stranger, &ctl, "DELETE", "/v1/tenants/web/plan", NULL, NULL, 0, &r);
    pc_http_result_free(&r);
    assert_true(status == 403 || status == 404);

    /* A deployment given no plan follows the tenant's. */
    assert_int_equal(upload(&env, &ctl, healthy("two")), 2);
    uint64_t id = start(&env, &ctl, "{}");
    doc = wait_state(&env, &ctl, id, "complete");
    assert_int_equal(num(doc, "stages_total"), 2);
    assert_non_null(strstr(event_detail(doc, "started"), "2 stages (the tenant's plan)"));
    json_decref(doc);
    for (int i = 0; i < N_AGENTS; i++)
        expect_serving(&agents[i], 2);

    /* The CLI: show, set from a file (checked before it is sent), clear. */
    char dir[256], file[300], out[8192];
    pc_test_tmpdir(dir, sizeof(dir), "plan");
    snprintf(file, sizeof(file), "%s/plan.json", dir);
    const char *show[] = {"plan", "show", "web", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, show, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "web deploys with its own plan, set by admin"));
    assert_non_null(strstr(out, "stage 2: {\"everyone\":true}"));
    const char *three = "[{\"permille\":500,\"bake_ms\":100},{\"pops\":[\"fra\"]},"
                        "{\"everyone\":true}]";
    pc_test_write_file(file, three, strlen(three));
    const char *set[] = {"plan", "set", "web", file, NULL};
    if (pc_test_cli(&env, &ctl, set, out, sizeof(out)) != 0)
        fail_msg("plan set: %s", out);
    assert_non_null(strstr(out, "stage 3: {\"everyone\":true}"));
    const char *not_a_plan = "{\"everyone\":true}";
    pc_test_write_file(file, not_a_plan, strlen(not_a_plan));
    assert_int_equal(pc_test_cli(&env, &ctl, set, out, sizeof(out)), 2);
    doc = request(&env, &ctl, "GET", "/v1/tenants/web/plan", NULL, NULL, 200);
    assert_int_equal(json_array_size(json_object_get(doc, "plan")), 3);
    json_decref(doc);
    const char *clear[] = {"plan", "clear", "web", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, clear, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "web deploys with the controllers' default plan"));
    doc = request(&env, &ctl, "GET", "/v1/tenants/web/plan", NULL, NULL, 200);
    assert_string_equal(text(doc, "source"), "controllers");
    json_decref(doc);

    pc_test_rm_rf(dir);
    fleet_down(&env, &ctl, agents);
}

/* A rollback that names no version goes back to the last version proven
 * on the whole fleet: not to one whose deployment ended before that, even
 * when every agent reported it live (here it served a 10 % split). */
static void test_rollback_skips_unfinished_deployments(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_controller ctl;
    pc_test_agent agents[N_AGENTS];
    fleet_up(&env, &ctl, agents, fra);
    assert_int_equal(upload(&env, &ctl, healthy("two")), 2);
    uint64_t id = start(&env, &ctl,
                        "{\"plan\":[{\"everyone\":true,\"split_permille\":100,\"split_key\":"
                        "\"x-user\",\"bake_ms\":600000,\"gate\":false},{\"everyone\":true}]}");
    wait_shown_live(&env, &ctl, 2);
    /* A direct deploy supersedes the deployment in its split stage. */
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "web", healthy("three")), 3);
    json_decref(wait_state(&env, &ctl, id, "superseded"));
    for (int i = 0; i < N_AGENTS; i++)
        expect_serving(&agents[i], 3);
    json_t *doc =
        request(&env, &ctl, "POST", "/v1/tenants/web/rollback", "application/json", "{}", 201);
    assert_int_equal(num(doc, "rollback_of"), 1);
    json_decref(doc);
    fleet_down(&env, &ctl, agents);
}

/* A leader killed with -9 in the middle of a deployment: the next leader
 * finds the record where the old one left it and carries on; the stage
 * never goes back and the history has no gap. */
static void test_leader_kill_9_mid_deployment(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_cluster cl;
    pc_test_cluster_init(&env, &cl, 3, 3, fast_controller);
    int leader = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
    assert_true(leader >= 0);
    pc_test_agent agents[2];
    memset(agents, 0, sizeof(agents));
    pc_test_agent_start_cluster(&env, &agents[0], "ams-0", &cl, ams);
    pc_test_agent_start_cluster(&env, &agents[1], "fra-0", &cl, fra);
    assert_int_equal(pc_test_deploy_lua(&env, &cl.node[leader], "web", healthy("one")), 1);
    expect_serving(&agents[0], 1);
    expect_serving(&agents[1], 1);
    assert_int_equal(upload(&env, &cl.node[leader], healthy("two")), 2);
    uint64_t id = start(&env, &cl.node[leader],
                        "{\"plan\":[{\"pops\":[\"ams\"],\"bake_ms\":1500,\"gate\":false},"
                        "{\"everyone\":true}]}");
    /* Kill the leader once the canary stage is under way. */
    expect_serving(&agents[0], 2);
    json_t *doc = NULL;
    char path[128];
    snprintf(path, sizeof(path), "/v1/tenants/web/deployments/%llu", (unsigned long long)id);
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while ((doc = pc_test_controller_json(&env, &cl.node[leader], path)) != NULL &&
           json_integer_value(json_object_get(doc, "stage_seq")) == 0 &&
           pc_test_now_ms() < deadline) {
        json_decref(doc);
        pc_test_sleep_ms(20);
    }
    assert_non_null(doc);
    json_int_t stage_before = num(doc, "stage");
    json_decref(doc);
    pc_proc_kill9(cl.node[leader].proc);
    pc_proc_free(cl.node[leader].proc);
    cl.node[leader].proc = NULL;
    int next = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
    assert_true(next >= 0 && next != leader);
    doc = wait_state(&env, &cl.node[next], id, "complete");
    assert_true(num(doc, "stage") >= stage_before);
    char names[512];
    event_names(doc, names, sizeof(names));
    assert_string_equal(names, "started staged passed staged passed complete");
    json_decref(doc);
    expect_serving(&agents[0], 2);
    expect_serving(&agents[1], 2);

    pc_test_agent_stop(&agents[0]);
    pc_test_agent_stop(&agents[1]);
    pc_test_cluster_stop(&cl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_healthy_version_passes_every_stage),
        cmocka_unit_test(test_failing_version_is_reverted_at_the_canary),
        cmocka_unit_test(test_nack_on_one_pop_halts_the_rollout),
        cmocka_unit_test(test_bad_deployments),
        cmocka_unit_test(test_cli_deployments),
        cmocka_unit_test(test_tenant_plan),
        cmocka_unit_test(test_rollback_skips_unfinished_deployments),
        cmocka_unit_test(test_leader_kill_9_mid_deployment),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
