/* test_fleet_truth.c - what an operator reads about the fleet is true:
 * an agent whose data directory was wiped is heard again (its report
 * counters keep growing); reports not signed by the key bound to an agent
 * id (bound on first use by default) are refused, counted and shown, and
 * move nothing; garbage on pub/sub never erases a genuine nack; each
 * version's outcome per agent (live, nacked) is kept and never rewritten
 * by later versions, and `status` shows what agents serve next to what
 * was asked for; ... */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>
#include <nng/protocol/reqrep0/req.h>

#include "envelope.h"
#include "harness.h"
#include "popcast.pb-c.h"

static json_t *api_json(pc_test_env *env, pc_test_controller *c, const char *path, int want)
{
    pc_http_result r;
    int status = pc_test_api(env, c, "GET", path, NULL, NULL, 0, &r);
    if (status != want)
        fail_msg("GET %s: expected %d, got %d: %s", path, want, status,
                 r.body ? (char *)r.body : "");
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    assert_non_null(doc);
    return doc;
}

/* The rollout of tenant's version, waiting up to wait_ms for it to end;
 * returns how the wait ended. */
static void expect_rollout_end(pc_test_env *env, pc_test_controller *c, const char *tenant,
                               uint64_t version, const char *want)
{
    char url[160];
    snprintf(url, sizeof(url), "/v1/tenants/%s/versions/%llu/rollout?wait=30000", tenant,
             (unsigned long long)version);
    json_t *doc = api_json(env, c, url, 200);
    const char *why = json_string_value(json_object_get(doc, "wait"));
    if (why == NULL || strcmp(why, want) != 0) {
        char *dump = json_dumps(doc, JSON_COMPACT);
        fail_msg("rollout of %s v%llu ended %s, expected %s: %s", tenant,
                 (unsigned long long)version, why ? why : "(none)", want, dump);
    }
    json_decref(doc);
}

/* The fleet entry of agent id (a new reference), or NULL. */
static json_t *fleet_agent(pc_test_env *env, pc_test_controller *c, const char *id)
{
    json_t *fleet = api_json(env, c, "/v1/fleet", 200);
    json_t *found = NULL;
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(fleet, "agents"), i, a)
    {
        if (strcmp(json_string_value(json_object_get(a, "agent_id")), id) == 0)
            found = json_incref(a);
    }
    json_decref(fleet);
    return found;
}

/* Sends one report straight to a controller's sync socket, signed by key
 * (carrying its public key) or unsigned; returns the controller's error
 * text in error ("" when accepted). */
static void send_report(pc_test_controller *c, const Popcast__AgentStatus *st,
                        const pc_signing_key *key, char *error, size_t cap)
{
    nng_socket s;
    assert_int_equal(nng_req0_open(&s), 0);
    nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 10000);
    assert_int_equal(nng_dial(s, c->sync_url, NULL, 0), 0);
    Popcast__AgentStatus copy = *st;
    Popcast__SyncCall call = POPCAST__SYNC_CALL__INIT;
    Popcast__SignedAgentStatus ss = POPCAST__SIGNED_AGENT_STATUS__INIT;
    uint8_t sig[PC_SIG_LEN], *packed = NULL;
    if (key != NULL) {
        copy.public_key.data = (uint8_t *)key->pub.pk;
        copy.public_key.len = PC_PK_LEN;
        size_t len = popcast__agent_status__get_packed_size(&copy);
        packed = malloc(len ? len : 1);
        popcast__agent_status__pack(&copy, packed);
        pc_sign(key, PC_DOMAIN_STATUS, packed, len, sig);
        ss.status.data = packed;
        ss.status.len = len;
        ss.signature.data = sig;
        ss.signature.len = PC_SIG_LEN;
        call.body_case = POPCAST__SYNC_CALL__BODY_SIGNED_STATUS;
        call.signed_status = &ss;
    } else {
        call.body_case = POPCAST__SYNC_CALL__BODY_STATUS;
        call.status = &copy;
    }
    size_t n = popcast__sync_call__get_packed_size(&call);
    uint8_t *buf = malloc(n);
    popcast__sync_call__pack(&call, buf);
    assert_int_equal(nng_send(s, buf, n, 0), 0);
    free(buf);
    free(packed);
    void *reply = NULL;
    size_t rlen = 0;
    assert_int_equal(nng_recv(s, &reply, &rlen, NNG_FLAG_ALLOC), 0);
    Popcast__SyncReply *rep = popcast__sync_reply__unpack(NULL, rlen, reply);
    assert_non_null(rep);
    assert_int_equal(rep->body_case, POPCAST__SYNC_REPLY__BODY_STATUS_ACK);
    snprintf(error, cap, "%s", rep->status_ack->error);
    popcast__sync_reply__free_unpacked(rep, NULL);
    nng_free(reply, rlen);
    nng_close(s);
}

/* A forged report for id: tenant app at version live (applied too),
 * applied seq 500, and a counter far above anything real. */
static void forged_report(Popcast__AgentStatus *st, Popcast__TenantStatus *ts,
                          Popcast__TenantStatus **list, const char *id, uint64_t live)
{
    popcast__agent_status__init(st);
    popcast__tenant_status__init(ts);
    ts->tenant = "app";
    ts->applied_version = live;
    ts->live_version = live;
    ts->applied_seq = 500;
    list[0] = ts;
    st->agent_id = (char *)id;
    st->pop = "forged";
    st->applied_seq = 500;
    st->tenants = list;
    st->n_tenants = 1;
    st->counter = UINT64_MAX / 2;
}

/* Polls the fleet until agent id is listed; returns its entry. */
static json_t *wait_fleet_agent(pc_test_env *env, pc_test_controller *c, const char *id)
{
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    json_t *a = NULL;
    while ((a = fleet_agent(env, c, id)) == NULL && pc_test_now_ms() < deadline)
        pc_test_sleep_ms(100);
    if (a == NULL)
        fail_msg("agent %s never appeared in the fleet of %s", id, c->api_url);
    return a;
}

static long long summary_of(json_t *doc, const char *key)
{
    return (long long)json_integer_value(json_object_get(json_object_get(doc, "summary"), key));
}

/* The rollout of app's version, once summary[key] reached want. */
static json_t *wait_summary(pc_test_env *env, pc_test_controller *c, uint64_t version,
                            const char *key, long long want)
{
    char url[128];
    snprintf(url, sizeof(url), "/v1/tenants/app/versions/%llu/rollout",
             (unsigned long long)version);
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    json_t *doc = api_json(env, c, url, 200);
    while (summary_of(doc, key) != want && pc_test_now_ms() < deadline) {
        json_decref(doc);
        pc_test_sleep_ms(100);
        doc = api_json(env, c, url, 200);
    }
    if (summary_of(doc, key) != want) {
        char *dump = json_dumps(doc, JSON_COMPACT);
        fail_msg("app v%llu: %s never reached %lld: %s", (unsigned long long)version, key, want,
                 dump);
    }
    return doc;
}

/* `popcast` with args; fails the test unless it exits want_rc and its
 * output has want_text. */
static void expect_cli(pc_test_env *env, pc_test_controller *c, const char *const *args,
                       int want_rc, const char *want_text)
{
    char out[8192];
    int rc = pc_test_cli(env, c, args, out, sizeof(out));
    if (rc != want_rc || strstr(out, want_text) == NULL)
        fail_msg("popcast %s %s %s: exit %d (expected %d, with \"%s\"):\n%s", args[0],
                 args[1] ? args[1] : "", args[1] && args[2] ? args[2] : "", rc, want_rc, want_text,
                 out);
}

/* An agent that restarted, then lost its data directory, then started
 * again (with its identity key kept outside the data directory, as
 * docs/security.md recommends): its reports are accepted again, so the
 * fleet shows it current and a new deploy's rollout completes. Before the
 * report epoch came from the clock, the wiped agent's counters started
 * over below what the controller had seen: every report was refused as a
 * replay, for good. */
static void test_wiped_agent_is_heard_again(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    char keydir[300], keypath[400];
    pc_test_tmpdir(keydir, sizeof(keydir), "identity");
    snprintf(keypath, sizeof(keypath), "%s/agent.key", keydir);
    const char *aflags[] = {"--identity-key", keypath, NULL};
    pc_test_agent agent = {0};
    pc_test_agent_start_for(&env, &agent, "edge-w", &ctl, aflags);
    char src[128];
    pc_test_lua_hello(src, sizeof(src), "one");
    uint64_t v1 = pc_test_deploy_lua(&env, &ctl, "app", src);
    expect_rollout_end(&env, &ctl, "app", v1, "complete");

    /* A restart: a new epoch from the stored one. */
    pc_test_agent_stop(&agent);
    pc_test_agent_start_for(&env, &agent, "edge-w", &ctl, aflags);
    pc_test_lua_hello(src, sizeof(src), "two");
    uint64_t v2 = pc_test_deploy_lua(&env, &ctl, "app", src);
    expect_rollout_end(&env, &ctl, "app", v2, "complete");

    /* The data directory is wiped; the agent starts from nothing. */
    pc_test_agent_stop(&agent);
    pc_test_rm_rf(agent.dir);
    assert_int_equal(mkdir(agent.dir, 0700), 0);
    pc_test_agent_start_for(&env, &agent, "edge-w", &ctl, aflags);
    assert_true(pc_test_wait_version(&agent, "app", v2, PC_TEST_CONVERGE_TIMEOUT_MS));
    assert_int_equal(pc_test_agent_metric(&agent, "popcast_agent_snapshots_installed_total"), 1);
    pc_test_lua_hello(src, sizeof(src), "three");
    uint64_t v3 = pc_test_deploy_lua(&env, &ctl, "app", src);
    expect_rollout_end(&env, &ctl, "app", v3, "complete");
    json_t *a = fleet_agent(&env, &ctl, "edge-w");
    assert_non_null(a);
    assert_int_equal(json_integer_value(json_object_get(a, "applied_seq")), 3);
    assert_int_equal(json_integer_value(json_object_get(a, "lag")), 0);
    assert_false(json_is_true(json_object_get(a, "gone")));
    json_decref(a);

    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_rm_rf(keydir);
    pc_test_env_cleanup(&env);
}

/* With the default configuration (require_enrollment off) an agent's key
 * is bound to its id on its first signed report. From then on, an unsigned
 * report, or one signed by another key, naming that id is refused: it
 * moves nothing (not the agent's state, not its counter, so the real
 * agent's reports keep counting), is counted by reason and shows on the
 * agent's fleet entry. Before, an unsigned report for an agent that was
 * not enrolled was accepted: it could show a nacked version live and raise
 * the counter so that the real agent was refused from then on. A lost key
 * is replaced by an operator (popcast agent enroll). */
static void test_reports_need_the_bound_key(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agent = {0};
    pc_test_agent_start_for(&env, &agent, "edge-1", &ctl, NULL);
    json_t *a = wait_fleet_agent(&env, &ctl, "edge-1");
    assert_true(json_is_true(json_object_get(a, "verified")));
    json_decref(a);
    json_t *agents = api_json(&env, &ctl, "/v1/agents", 200);
    json_t *rec = json_array_get(json_object_get(agents, "agents"), 0);
    assert_string_equal(json_string_value(json_object_get(rec, "agent_id")), "edge-1");
    assert_true(json_is_true(json_object_get(rec, "first_use")));
    json_decref(agents);

    char src[128];
    pc_test_lua_hello(src, sizeof(src), "one");
    uint64_t v1 = pc_test_deploy_lua(&env, &ctl, "app", src);
    expect_rollout_end(&env, &ctl, "app", v1, "complete");
    const char *bad = "error('boom')\nreturn function() end\n";
    uint64_t v2 = pc_test_deploy_lua(&env, &ctl, "app", bad);
    expect_rollout_end(&env, &ctl, "app", v2, "nacked");

    /* Forged: v2 live, a huge counter; unsigned, then signed by a key
     * that is not edge-1's. */
    Popcast__AgentStatus st;
    Popcast__TenantStatus ts, *list[1];
    forged_report(&st, &ts, list, "edge-1", v2);
    char error[512];
    send_report(&ctl, &st, NULL, error, sizeof(error));
    if (strstr(error, "unsigned") == NULL)
        fail_msg("unsigned report for edge-1: answer \"%s\"", error);
    pc_signing_key other;
    assert_int_equal(pc_keygen(&other), PC_OK);
    send_report(&ctl, &st, &other, error, sizeof(error));
    if (strstr(error, "another key") == NULL)
        fail_msg("report for edge-1 signed by another key: answer \"%s\"", error);
    /* An unsigned report for an id never seen: refused too, and listed. */
    forged_report(&st, &ts, list, "ghost-7", v2);
    send_report(&ctl, &st, NULL, error, sizeof(error));
    assert_non_null(strstr(error, "unsigned"));

    /* Nothing moved: v2 is still nacked on edge-1, which still counts. */
    json_t *doc = api_json(&env, &ctl, "/v1/tenants/app/versions/2/rollout", 200);
    json_t *entry = json_array_get(json_object_get(doc, "agents"), 0);
    assert_string_equal(json_string_value(json_object_get(entry, "state")), "nacked");
    assert_string_equal(json_string_value(json_object_get(entry, "pop")), "default");
    json_decref(doc);
    pc_test_lua_hello(src, sizeof(src), "three");
    uint64_t v3 = pc_test_deploy_lua(&env, &ctl, "app", src);
    expect_rollout_end(&env, &ctl, "app", v3, "complete");

    /* Counted and shown. */
    a = fleet_agent(&env, &ctl, "edge-1");
    assert_true(json_integer_value(json_object_get(a, "applied_seq")) < 500);
    assert_int_equal(json_integer_value(json_object_get(a, "refused_reports")), 2);
    json_t *last = json_object_get(a, "last_refusal");
    assert_string_equal(json_string_value(json_object_get(last, "reason")), "wrong_key");
    json_decref(a);
    json_t *fleet = api_json(&env, &ctl, "/v1/fleet", 200);
    json_t *ghost = json_array_get(json_object_get(fleet, "refused"), 0);
    assert_string_equal(json_string_value(json_object_get(ghost, "agent_id")), "ghost-7");
    assert_string_equal(json_string_value(json_object_get(ghost, "reason")), "unsigned");
    assert_int_equal(json_integer_value(json_object_get(ghost, "count")), 1);
    json_decref(fleet);
    assert_int_equal(
        pc_test_controller_metric(&ctl, "popcast_status_refused_total{reason=\"unsigned\"}"), 2);
    assert_int_equal(
        pc_test_controller_metric(&ctl, "popcast_status_refused_total{reason=\"wrong_key\"}"), 1);

    /* The agent loses its key (it lived in the wiped data directory): its
     * reports are refused as signed by another key, until an operator
     * binds the new one. */
    pc_test_agent_stop(&agent);
    pc_test_rm_rf(agent.dir);
    assert_int_equal(mkdir(agent.dir, 0700), 0);
    pc_test_agent_start_for(&env, &agent, "edge-1", &ctl, NULL);
    uint64_t before =
        pc_test_controller_metric(&ctl, "popcast_status_refused_total{reason=\"wrong_key\"}");
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (pc_test_controller_metric(&ctl, "popcast_status_refused_total{reason=\"wrong_key\"}") ==
               before &&
           pc_test_now_ms() < deadline)
        pc_test_sleep_ms(100);
    assert_true(pc_test_controller_metric(
                    &ctl, "popcast_status_refused_total{reason=\"wrong_key\"}") > before);
    char keyfile[400], out[4096];
    snprintf(keyfile, sizeof(keyfile), "%s/agent.key.pub", agent.dir);
    const char *enroll[] = {"agent", "enroll", "edge-1", keyfile, NULL};
    int rc = pc_test_cli(&env, &ctl, enroll, out, sizeof(out));
    if (rc != 0)
        fail_msg("popcast agent enroll: exit %d:\n%s", rc, out);
    pc_test_lua_hello(src, sizeof(src), "four");
    uint64_t v4 = pc_test_deploy_lua(&env, &ctl, "app", src);
    expect_rollout_end(&env, &ctl, "app", v4, "complete");

    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

/* In a cluster, every controller hears an agent once the leader bound its
 * key: followers do not bind, they wait for the leader's record, which
 * raft brings them. */
static void test_first_use_binding_in_a_cluster(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_cluster cl;
    pc_test_cluster_init(&env, &cl, 3, 3, NULL);
    int leader = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
    assert_true(leader >= 0);
    pc_test_agent agent = {0};
    pc_test_agent_start_cluster(&env, &agent, "edge-c", &cl, NULL);
    for (int i = 0; i < cl.n; i++) {
        json_t *a = wait_fleet_agent(&env, &cl.node[i], "edge-c");
        assert_true(json_is_true(json_object_get(a, "verified")));
        json_decref(a);
    }
    json_t *agents = api_json(&env, &cl.node[leader], "/v1/agents", 200);
    assert_int_equal(json_array_size(json_object_get(agents, "agents")), 1);
    json_decref(agents);
    pc_test_agent_stop(&agent);
    pc_test_cluster_stop(&cl);
    pc_test_env_cleanup(&env);
}

/* Garbage on an agent's subscription: undecodable messages, messages with
 * no body, and entries for the nacked version signed by a stranger. Each
 * is refused and counted, none becomes a nack, and the genuine nack of v2
 * stays: the rollout still says nacked and `popcast rollout --wait` fails
 * (exit 3). Before, every refusal was a nack with tenant "" in a ring of
 * 64, so enough garbage erased the real one: the agent turned from
 * nacked to missing and --wait timed out instead. */
static void test_garbage_does_not_erase_nacks(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    char rogue_url[64];
    snprintf(rogue_url, sizeof(rogue_url), "tcp://127.0.0.1:%d", pc_test_free_port());
    nng_socket rogue;
    assert_int_equal(nng_pub0_open(&rogue), 0);
    assert_int_equal(nng_listen(rogue, rogue_url, NULL, 0), 0);
    const char *subs[] = {ctl.pub_url, rogue_url, NULL};
    const char *syncs[] = {ctl.sync_url, NULL};
    pc_test_agent agent = {0};
    pc_test_agent_start(&env, &agent, "victim", subs, syncs, NULL);

    char src[128];
    pc_test_lua_hello(src, sizeof(src), "one");
    uint64_t v1 = pc_test_deploy_lua(&env, &ctl, "app", src);
    expect_rollout_end(&env, &ctl, "app", v1, "complete");
    const char *bad = "error('boom')\nreturn function() end\n";
    uint64_t v2 = pc_test_deploy_lua(&env, &ctl, "app", bad);
    expect_rollout_end(&env, &ctl, "app", v2, "nacked");

    /* A forged entry claiming app v2 at the next seq. */
    pc_signing_key stranger;
    assert_int_equal(pc_keygen(&stranger), PC_OK);
    Popcast__Manifest m = POPCAST__MANIFEST__INIT;
    uint8_t hash[PC_HASH_LEN] = {0};
    m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY;
    m.tenant = "app";
    m.version = v2;
    m.seq = 3;
    m.bundle_hash.data = hash;
    m.bundle_hash.len = PC_HASH_LEN;
    m.entrypoint = "main.lua";
    m.runtime = "lua";
    Popcast__SignedManifest sm;
    assert_int_equal(pc_envelope_sign_manifest(&stranger, &m, &sm, NULL), PC_OK);
    Popcast__Entry e = POPCAST__ENTRY__INIT;
    e.signed_ = &sm;
    Popcast__Publication pub = POPCAST__PUBLICATION__INIT;
    pub.body_case = POPCAST__PUBLICATION__BODY_ENTRY;
    pub.entry = &e;
    size_t forged_len = popcast__publication__get_packed_size(&pub);
    uint8_t *forged = malloc(forged_len);
    popcast__publication__pack(&pub, forged);
    Popcast__Publication empty = POPCAST__PUBLICATION__INIT;
    uint8_t empty_buf[16];
    size_t empty_len = popcast__publication__pack(&empty, empty_buf);
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};

    /* pub/sub may drop, and the rogue link may come up late: send until
     * the agent counted well over a ring's worth of each. */
    const char *invalid = "popcast_agent_refused_total{reason=\"invalid\"}";
    const char *untrusted = "popcast_agent_refused_total{reason=\"untrusted_key\"}";
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while ((pc_test_agent_metric(&agent, invalid) < 150 ||
            pc_test_agent_metric(&agent, untrusted) < 80) &&
           pc_test_now_ms() < deadline) {
        for (int i = 0; i < 20; i++) {
            nng_send(rogue, (void *)junk, sizeof(junk), 0);
            nng_send(rogue, empty_buf, empty_len, 0);
            nng_send(rogue, forged, forged_len, 0);
        }
        pc_test_sleep_ms(50);
    }
    assert_true(pc_test_agent_metric(&agent, invalid) >= 150);
    assert_true(pc_test_agent_metric(&agent, untrusted) >= 80);
    free(forged);
    pc_envelope_signed_clear(&sm);

    /* A report sent after all that still carries the nack: wait for one
     * that shows the agent's refusals happened (a new deploy of another
     * tenant), then look at v2. */
    pc_test_lua_hello(src, sizeof(src), "other");
    uint64_t o1 = pc_test_deploy_lua(&env, &ctl, "other", src);
    expect_rollout_end(&env, &ctl, "other", o1, "complete");
    json_t *doc = api_json(&env, &ctl, "/v1/tenants/app/versions/2/rollout", 200);
    json_t *a = json_array_get(json_object_get(doc, "agents"), 0);
    assert_string_equal(json_string_value(json_object_get(a, "state")), "nacked");
    assert_string_equal(json_string_value(json_object_get(a, "reason")), "runtime_error");
    json_decref(doc);
    char out[8192];
    const char *wait_cmd[] = {"rollout", "app", "2", "--wait", "--timeout", "20", NULL};
    int rc = pc_test_cli(&env, &ctl, wait_cmd, out, sizeof(out));
    if (rc != 3 || strstr(out, "refused: app v2 was nacked by 1 agent") == NULL)
        fail_msg("popcast rollout app 2 --wait: exit %d:\n%s", rc, out);

    /* The agent's nacks: the genuine one only. */
    json_t *st = pc_test_agent_status(&agent);
    assert_non_null(st);
    json_t *nacks = json_object_get(st, "nacks");
    assert_int_equal(json_array_size(nacks), 1);
    json_t *n0 = json_array_get(nacks, 0);
    assert_string_equal(json_string_value(json_object_get(n0, "tenant")), "app");
    assert_int_equal(json_integer_value(json_object_get(n0, "version")), v2);
    assert_string_equal(json_string_value(json_object_get(n0, "reason")), "runtime_error");
    json_decref(st);

    nng_close(rogue);
    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

/* A version every agent nacked stays nacked when a good one follows: its
 * rollout and `popcast rollout --wait` say nacked (exit 3), not "live
 * 3/3, complete" as when live meant "live version >= V". `status` shows
 * what was asked for next to what agents serve. A version that went live
 * stays live (superseded) after newer ones, across an agent restart; a
 * rollback's rollout says rollback; a delete's rollout completes. */
static void test_outcomes_are_kept(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agents[3];
    memset(agents, 0, sizeof(agents));
    const char *ids[] = {"out-1", "out-2", "out-3"};
    for (int i = 0; i < 3; i++)
        pc_test_agent_start_for(&env, &agents[i], ids[i], &ctl, NULL);
    for (int i = 0; i < 3; i++)
        json_decref(wait_fleet_agent(&env, &ctl, ids[i]));

    char src[128];
    pc_test_lua_hello(src, sizeof(src), "one");
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "app", src), 1);
    json_decref(wait_summary(&env, &ctl, 1, "live", 3));
    const char *bad = "error('boom')\nreturn function() end\n";
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "app", bad), 2);
    json_decref(wait_summary(&env, &ctl, 2, "nacked", 3));

    /* Asked for v2, served v1 everywhere. */
    const char *status_cmd[] = {"status", "app", NULL};
    expect_cli(&env, &ctl, status_cmd, 0, "requested      v2");
    expect_cli(&env, &ctl, status_cmd, 0, "serving        v1 on 3 (of 3 agents)");
    json_t *t = api_json(&env, &ctl, "/v1/tenants/app", 200);
    json_t *serving = json_object_get(t, "serving");
    assert_int_equal(json_integer_value(json_object_get(serving, "agents")), 3);
    json_t *sv0 = json_array_get(json_object_get(serving, "versions"), 0);
    assert_int_equal(json_integer_value(json_object_get(sv0, "version")), 1);
    assert_int_equal(json_integer_value(json_object_get(sv0, "agents")), 3);
    json_decref(t);

    /* A good v3: v2 stays nacked everywhere, v1 stays live (superseded). */
    pc_test_lua_hello(src, sizeof(src), "three");
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "app", src), 3);
    json_decref(wait_summary(&env, &ctl, 3, "live", 3));
    const char *wait2[] = {"rollout", "app", "2", "--wait", "--timeout", "20", NULL};
    expect_cli(&env, &ctl, wait2, 3, "refused: app v2 was nacked by 3 agent(s)");
    json_t *doc = wait_summary(&env, &ctl, 2, "nacked", 3);
    assert_int_equal(summary_of(doc, "live"), 0);
    assert_false(json_is_true(json_object_get(json_object_get(doc, "summary"), "complete")));
    json_decref(doc);
    doc = wait_summary(&env, &ctl, 1, "superseded", 3);
    assert_int_equal(summary_of(doc, "live"), 3);
    json_decref(doc);
    expect_cli(&env, &ctl, status_cmd, 0, "serving        v3 on 3 (of 3 agents)");

    /* An agent restarts: what it decided before survives. Then a
     * rollback: its rollout says so. */
    pc_test_agent_stop(&agents[0]);
    pc_test_agent_start_for(&env, &agents[0], ids[0], &ctl, NULL);
    pc_http_result r;
    const char *body = "{\"version\": 1}";
    assert_int_equal(pc_test_api(&env, &ctl, "POST", "/v1/tenants/app/rollback", "application/json",
                                 body, strlen(body), &r),
                     201);
    pc_http_result_free(&r);
    const char *wait4[] = {"rollout", "app", "4", "--wait", "--timeout", "60", NULL};
    expect_cli(&env, &ctl, wait4, 0, "live: app v4 is live on 3/3 agents");
    doc = api_json(&env, &ctl, "/v1/tenants/app/versions/4/rollout", 200);
    assert_string_equal(json_string_value(json_object_get(doc, "kind")), "rollback");
    json_decref(doc);
    doc = api_json(&env, &ctl, "/v1/tenants/app/versions/2/rollout", 200);
    assert_int_equal(summary_of(doc, "nacked"), 3);
    json_decref(doc);
    doc = api_json(&env, &ctl, "/v1/tenants/app/versions/3/rollout", 200);
    assert_int_equal(summary_of(doc, "live"), 3);
    assert_int_equal(summary_of(doc, "superseded"), 3);
    json_decref(doc);

    /* A delete: its rollout completes; v4 went live, then the delete. */
    assert_int_equal(pc_test_api(&env, &ctl, "DELETE", "/v1/tenants/app", NULL, NULL, 0, &r), 200);
    pc_http_result_free(&r);
    expect_rollout_end(&env, &ctl, "app", 5, "complete");
    doc = api_json(&env, &ctl, "/v1/tenants/app/versions/4/rollout", 200);
    assert_int_equal(summary_of(doc, "live"), 3);
    json_decref(doc);
    doc = wait_summary(&env, &ctl, 4, "superseded", 3);
    json_decref(doc);
    expect_cli(&env, &ctl, status_cmd, 0, "serving        nothing on 3 (of 3 agents)");

    for (int i = 0; i < 3; i++)
        pc_test_agent_stop(&agents[i]);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wiped_agent_is_heard_again),
        cmocka_unit_test(test_reports_need_the_bound_key),
        cmocka_unit_test(test_first_use_binding_in_a_cluster),
        cmocka_unit_test(test_garbage_does_not_erase_nacks),
        cmocka_unit_test(test_outcomes_are_kept),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
