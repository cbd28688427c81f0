/* test_agent_identity.c - status reports signed by each agent's own key:
 * with enrollment required, an unenrolled agent's reports are refused; once
 * enrolled (CLI) they count and show as verified; forged reports (another
 * key, or unsigned for an enrolled agent) and replayed ones are refused and
 * do not move the rollout state; a revoked agent's reports are refused. */
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "popcast.pb-c.h"

static pc_test_env env;
static pc_test_controller ctl;
static pc_test_agent agent;

static json_t *api_json(const char *method, const char *path, const char *body, int want)
{
    pc_http_result r;
    int status = pc_test_api(&env, &ctl, method, path, body ? "application/json" : NULL, body,
                             body ? strlen(body) : 0, &r);
    if (status != want)
        fail_msg("%s %s: expected %d, got %d: %s", method, path, want, status,
                 r.body ? (char *)r.body : "");
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    return doc;
}

/* The fleet entry for id (a new reference), or NULL. */
static json_t *fleet_agent(const char *id)
{
    json_t *fleet = api_json("GET", "/v1/fleet", NULL, 200);
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

/* The sum of every series of a controller metric (any labels). */
static uint64_t controller_metric(const char *name)
{
    pc_http_result r;
    assert_int_equal(pc_http_call(ctl.api_url, "GET", "/metrics", NULL, NULL, 0, 10000, &r, NULL),
                     PC_OK);
    uint64_t v = 0;
    size_t n = strlen(name);
    for (const char *line = (const char *)r.body; line != NULL && *line != '\0';) {
        if (strncmp(line, name, n) == 0 && (line[n] == ' ' || line[n] == '{')) {
            const char *num = strchr(line + n, ' ');
            if (num != NULL)
                v += strtoull(num + 1, NULL, 10);
        }
        line = strchr(line, '\n');
        line = line ? line + 1 : NULL;
    }
    pc_http_result_free(&r);
    return v;
}

/* Sends one report straight to the controller's sync socket; returns the
 * controller's error text ("" when accepted). */
static void send_report(const Popcast__AgentStatus *st, const pc_signing_key *key, bool sign,
                        char *error, size_t cap)
{
    nng_socket s;
    assert_int_equal(nng_req0_open(&s), 0);
    nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 10000);
    assert_int_equal(nng_dial(s, ctl.sync_url, NULL, 0), 0);
    Popcast__SyncCall call = POPCAST__SYNC_CALL__INIT;
    Popcast__SignedAgentStatus ss = POPCAST__SIGNED_AGENT_STATUS__INIT;
    size_t len = popcast__agent_status__get_packed_size(st);
    uint8_t *packed = malloc(len ? len : 1);
    popcast__agent_status__pack(st, packed);
    uint8_t sig[PC_SIG_LEN];
    if (sign) {
        pc_sign(key, PC_DOMAIN_STATUS, packed, len, sig);
        ss.status.data = packed;
        ss.status.len = len;
        ss.signature.data = sig;
        ss.signature.len = PC_SIG_LEN;
        call.body_case = POPCAST__SYNC_CALL__BODY_SIGNED_STATUS;
        call.signed_status = &ss;
    } else {
        call.body_case = POPCAST__SYNC_CALL__BODY_STATUS;
        call.status = (Popcast__AgentStatus *)st;
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

static void report_for(Popcast__AgentStatus *st, Popcast__TenantStatus *ts,
                       Popcast__TenantStatus **list, const char *id, uint64_t counter,
                       uint64_t applied_seq)
{
    popcast__agent_status__init(st);
    popcast__tenant_status__init(ts);
    ts->tenant = "app";
    ts->applied_version = 99;
    ts->live_version = 99;
    ts->applied_seq = applied_seq;
    list[0] = ts;
    st->agent_id = (char *)id;
    st->pop = "forged";
    st->applied_seq = applied_seq;
    st->tenants = list;
    st->n_tenants = 1;
    st->counter = counter;
}

static void test_enrollment_and_forgery(void **state)
{
    pc_test_env_init(&env);
    const char *cflags[] = {"--require-enrollment", NULL};
    pc_test_controller_start(&env, &ctl, cflags);
    pc_test_agent_start_for(&env, &agent, "edge-1", &ctl, NULL);

    /* Not enrolled: its (signed) reports are refused, it is not in the
     * fleet. */
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (controller_metric("popcast_status_refused_total") == 0 && pc_test_now_ms() < deadline)
        pc_test_sleep_ms(100);
    assert_true(controller_metric("popcast_status_refused_total") > 0);
    assert_null(fleet_agent("edge-1"));

    /* Enroll it with the CLI, from the public key file it wrote. */
    char keyfile[400], out[4096];
    snprintf(keyfile, sizeof(keyfile), "%s/agent.key.pub", agent.dir);
    const char *enroll[] = {"agent", "enroll", "edge-1", keyfile, NULL};
    int rc = pc_test_cli(&env, &ctl, enroll, out, sizeof(out));
    if (rc != 0)
        fail_msg("popcast agent enroll: exit %d:\n%s", rc, out);
    json_t *a = NULL;
    deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while ((a = fleet_agent("edge-1")) == NULL && pc_test_now_ms() < deadline)
        pc_test_sleep_ms(100);
    assert_non_null(a);
    assert_true(json_is_true(json_object_get(a, "verified")));
    json_decref(a);

    /* A deploy goes live and the rollout counts the verified agent. */
    char src[128];
    pc_test_lua_hello(src, sizeof(src), "hello");
    uint64_t v = pc_test_deploy_lua(&env, &ctl, "app", src);
    char url[128];
    snprintf(url, sizeof(url), "/v1/tenants/app/versions/%llu/rollout?wait=30000",
             (unsigned long long)v);
    json_t *doc = api_json("GET", url, NULL, 200);
    assert_string_equal(json_string_value(json_object_get(doc, "wait")), "complete");
    json_decref(doc);

    /* Forged: edge-1's id, a huge counter, v99 live, signed by another
     * key; then the same unsigned. Both refused; nothing moves. */
    pc_signing_key other;
    assert_int_equal(pc_keygen(&other), PC_OK);
    Popcast__AgentStatus st;
    Popcast__TenantStatus ts, *list[1];
    report_for(&st, &ts, list, "edge-1", UINT64_MAX / 2, 500);
    char error[256];
    send_report(&st, &other, true, error, sizeof(error));
    assert_non_null(strstr(error, "signature"));
    send_report(&st, &other, false, error, sizeof(error));
    assert_non_null(strstr(error, "unsigned"));
    a = fleet_agent("edge-1");
    assert_true((uint64_t)json_integer_value(json_object_get(a, "applied_seq")) < 500);
    assert_string_equal(json_string_value(json_object_get(a, "pop")), "default");
    json_decref(a);
    doc = api_json("GET", "/v1/tenants/app/versions/1/rollout", NULL, 200);
    json_t *entry = json_array_get(json_object_get(doc, "agents"), 0);
    assert_int_equal(json_integer_value(json_object_get(entry, "live_version")), v);
    json_decref(doc);

    /* Replay: a test-owned agent, enrolled; its report counts once. */
    pc_signing_key mine;
    assert_int_equal(pc_keygen(&mine), PC_OK);
    char pk[128], body[256];
    pc_key_format_public(&mine.pub, pk, sizeof(pk));
    snprintf(body, sizeof(body), "{\"agent_id\": \"fake-1\", \"public_key\": \"%s\"}", pk);
    json_decref(api_json("POST", "/v1/agents", body, 201));
    report_for(&st, &ts, list, "fake-1", 10, 3);
    send_report(&st, &mine, true, error, sizeof(error));
    assert_string_equal(error, "");
    send_report(&st, &mine, true, error, sizeof(error)); /* the same bytes again */
    assert_non_null(strstr(error, "counter"));
    report_for(&st, &ts, list, "fake-1", 9, 7); /* older counter */
    send_report(&st, &mine, true, error, sizeof(error));
    assert_non_null(strstr(error, "counter"));
    a = fleet_agent("fake-1");
    assert_int_equal(json_integer_value(json_object_get(a, "applied_seq")), 3);
    json_decref(a);

    /* Revoked: refused from then on. */
    json_decref(api_json("DELETE", "/v1/agents/fake-1", NULL, 200));
    report_for(&st, &ts, list, "fake-1", 11, 4);
    send_report(&st, &mine, true, error, sizeof(error));
    assert_non_null(strstr(error, "revoked"));
    doc = api_json("GET", "/v1/agents", NULL, 200);
    assert_int_equal(json_array_size(json_object_get(doc, "agents")), 2);
    json_decref(doc);
    /* Malformed enrollments. */
    json_decref(api_json("POST", "/v1/agents", "{\"agent_id\": \"x\"}", 400));
    json_decref(api_json("POST", "/v1/agents",
                         "{\"agent_id\": \"bad id\", \"public_key\": \"AAAA\"}", 400));
    json_decref(
        api_json("POST", "/v1/agents", "{\"agent_id\": \"x\", \"public_key\": \"nope\"}", 400));

    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enrollment_and_forgery),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
