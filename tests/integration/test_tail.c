/* test_tail.c - popcast tail (docs/api.md "Tail") on a real controller
 * and agent: a tailed tenant's print output, its failed requests' errors
 * with the Lua message, and its request lines (method, path, status,
 * version, duration, agent, PoP) reach the tail through the controller;
 * nothing of another tenant does; lines the agent could not hold are
 * counted and shown; a scoped token tails its own tenants only; the
 * agent's sync port refuses forged, unsigned and replayed batches. */
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

#include "crypto.h"
#include "harness.h"
#include "popcast.pb-c.h"

static pc_test_env env;
static pc_test_controller ctl;
static pc_test_agent agent;

static const char *const agent_flags[] = {
    "--pop", "fra", "--tail-poll-ms", "100", "--tail-flush-ms", "50", "--tail-buffer-lines",
    "6",     NULL};

/* Prints its path's words; /boom fails with a message; /many prints 40
 * lines (more than the edge keeps of one request). */
static const char *const printer_src =
    "function handle(req)\n"
    "  if req.path == '/boom' then error('boom at ' .. req.path) end\n"
    "  if req.path == '/many' then for i = 1, 40 do print('line', i) end end\n"
    "  print('hello from', req.path, 42)\n"
    "  return 'ok'\n"
    "end\n";

static int setup(void **state)
{
    (void)state;
    pc_test_env_init(&env);
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent_start_for(&env, &agent, "edge-t", &ctl, agent_flags);
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "printer", printer_src), 1);
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "quiet");
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "other", src), 1);
    assert_true(pc_test_wait_version(&agent, "printer", 1, PC_TEST_CONVERGE_TIMEOUT_MS));
    assert_true(pc_test_wait_version(&agent, "other", 1, PC_TEST_CONVERGE_TIMEOUT_MS));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
    return 0;
}

/* popcast tail run on a thread of its own, while the test makes
 * requests. */
typedef struct tail_run {
    const char *const *args;
    char out[65536];
    int rc;
    atomic_int done;
} tail_run;

static void *run_tail(void *arg)
{
    tail_run *t = arg;
    t->rc = pc_test_cli(&env, &ctl, t->args, t->out, sizeof(t->out));
    atomic_store(&t->done, 1);
    return NULL;
}

/* Requests path of tenant (and one of "other") until the tail ends,
 * bounded. */
static void drive(tail_run *t, const char *tenant, const char *path)
{
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (!atomic_load(&t->done) && pc_test_now_ms() < deadline) {
        pc_test_edge_get(&agent, tenant, path, NULL, NULL, 0);
        pc_test_edge_get(&agent, "other", "/x", NULL, NULL, 0);
        pc_test_sleep_ms(50); /* a request pace, not a wait for an event */
    }
}

/* The JSON events popcast tail --json printed, as an array. */
static json_t *events_of(const char *out)
{
    json_t *all = json_array();
    const char *p = out;
    while (*p != '\0') {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        json_t *e = json_loadb(p, len, 0, NULL);
        if (e != NULL)
            json_array_append_new(all, e);
        p += len + (nl != NULL);
    }
    return all;
}

static json_t *find_line(json_t *events, const char *kind, const char *path)
{
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e)
    {
        json_t *d = json_object_get(e, "data");
        if (strcmp(json_string_value(json_object_get(e, "event")), "line") == 0 &&
            strcmp(json_string_value(json_object_get(d, "kind")), kind) == 0 &&
            strcmp(json_string_value(json_object_get(d, "path")), path) == 0)
            return d;
    }
    return NULL;
}

/* print output, the error with its Lua message, request lines; all of
 * printer's and none of other's. */
static void test_lines_reach_the_tail(void **state)
{
    (void)state;
    const char *args[] = {"tail", "printer", "--count", "8", "--json", NULL};
    tail_run t = {.args = args};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, run_tail, &t), 0);
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (int i = 0; !atomic_load(&t.done) && pc_test_now_ms() < deadline; i++) {
        pc_test_edge_get(&agent, "printer", i % 2 ? "/boom" : "/hi", NULL, NULL, 0);
        pc_test_edge_get(&agent, "other", "/x", NULL, NULL, 0);
        pc_test_sleep_ms(50);
    }
    pthread_join(th, NULL);
    if (t.rc != 0)
        fail_msg("popcast tail printer: exit %d: %s", t.rc, t.out);
    json_t *events = events_of(t.out);
    assert_int_equal(json_array_size(events), 8);
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e)
    {
        json_t *d = json_object_get(e, "data");
        assert_string_equal(json_string_value(json_object_get(d, "tenant")), "printer");
    }
    json_t *print = find_line(events, "print", "/hi");
    if (print == NULL)
        fail_msg("no print line in: %s", t.out);
    assert_string_equal(json_string_value(json_object_get(print, "message")),
                        "hello from\t/hi\t42");
    assert_int_equal(json_integer_value(json_object_get(print, "version")), 1);
    assert_string_equal(json_string_value(json_object_get(print, "agent")), "edge-t");
    assert_string_equal(json_string_value(json_object_get(print, "pop")), "fra");
    json_t *err = find_line(events, "error", "/boom");
    if (err == NULL)
        fail_msg("no error line in: %s", t.out);
    assert_non_null(strstr(json_string_value(json_object_get(err, "message")), "boom at /boom"));
    assert_int_equal(json_integer_value(json_object_get(err, "status")), 502);
    json_t *req = find_line(events, "request", "/hi");
    if (req == NULL)
        fail_msg("no request line in: %s", t.out);
    assert_string_equal(json_string_value(json_object_get(req, "method")), "GET");
    assert_int_equal(json_integer_value(json_object_get(req, "status")), 200);
    assert_int_equal(json_integer_value(json_object_get(req, "version")), 1);
    assert_true(json_integer_value(json_object_get(req, "duration_us")) > 0);
    json_decref(events);
    assert_true(pc_test_agent_metric(&agent, "popcast_agent_tail_lines_total") >= 8);
}

/* The text form: one line per log line. */
static void test_text_lines(void **state)
{
    (void)state;
    const char *args[] = {"tail", "printer", "--count", "1", NULL};
    tail_run t = {.args = args};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, run_tail, &t), 0);
    drive(&t, "printer", "/text");
    pthread_join(th, NULL);
    assert_int_equal(t.rc, 0);
    /* The first line of a request is its print (lines keep their order). */
    if (strstr(t.out, "edge-t (fra) v1 print: hello from\t/text\t42\n") == NULL)
        fail_msg("unexpected: %s", t.out);
}

/* A request printing more than the agent holds: the lines it could not
 * keep are counted and the tail shows the count. */
static void test_drops_are_shown(void **state)
{
    (void)state;
    const char *args[] = {"tail", "printer", "--count", "200", "--json", NULL};
    tail_run t = {.args = args};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, run_tail, &t), 0);
    /* Each /many request prints 40 lines: the edge keeps 16, the buffer
     * holds 6; --count bounds the run. */
    drive(&t, "printer", "/many");
    pthread_join(th, NULL);
    assert_int_equal(t.rc, 0);
    json_t *events = events_of(t.out);
    size_t i;
    json_t *e;
    uint64_t dropped = 0;
    json_array_foreach(events, i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "event")), "dropped") != 0)
            continue;
        json_t *d = json_object_get(e, "data");
        assert_string_equal(json_string_value(json_object_get(d, "agent")), "edge-t");
        dropped += (uint64_t)json_integer_value(json_object_get(d, "dropped"));
    }
    json_decref(events);
    if (dropped == 0)
        fail_msg("no drops shown: %.2000s", t.out);
    assert_true(pc_test_agent_metric(&agent, "popcast_agent_tail_dropped") > 0);
}

/* A token scoped to "other" may not tail printer (refused before any
 * stream); an unknown name is a usage error of the CLI. */
static void test_scoped_and_bad(void **state)
{
    (void)state;
    pc_http_result r;
    const char *req = "{\"tenants\": [\"other\"], \"name\": \"other-tail\"}";
    assert_int_equal(
        pc_test_api(&env, &ctl, "POST", "/v1/tokens", "application/json", req, strlen(req), &r),
        201);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    char auth[160];
    snprintf(auth, sizeof(auth), "Bearer %s", json_string_value(json_object_get(doc, "token")));
    json_decref(doc);
    const char *headers[] = {"Authorization", auth, NULL};
    pc_err err;
    assert_int_equal(pc_http_call(ctl.api_url, "GET", "/v1/tenants/printer/tail", headers, NULL, 0,
                                  5000, &r, &err),
                     PC_OK);
    assert_int_equal(r.status, 404);
    pc_http_result_free(&r);
    assert_int_equal(
        pc_http_call(ctl.api_url, "GET", "/v1/tenants/printer/tail", NULL, NULL, 0, 5000, &r, &err),
        PC_OK);
    assert_int_equal(r.status, 401);
    pc_http_result_free(&r);
    assert_int_equal(pc_test_api(&env, &ctl, "GET", "/v1/tenants/Bad-Name/tail", NULL, NULL, 0, &r),
                     400);
    pc_http_result_free(&r);
    char out[4096];
    const char *bad[] = {"tail", "Bad-Name", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, bad, out, sizeof(out)), 2);
    const char *missing[] = {"tail", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, missing, out, sizeof(out)), 2);
    const char *zero[] = {"tail", "printer", "--count", "0", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, zero, out, sizeof(out)), 2);
    const char *from[] = {"tail", "printer", "--from", "3", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, from, out, sizeof(out)), 2);
    assert_non_null(strstr(out, "--from is not an option of tail"));
}

/* One call on the controller's sync port; the TailAck. */
static Popcast__SyncReply *sync_call(const Popcast__SignedTailBatch *sb)
{
    Popcast__SyncCall call = POPCAST__SYNC_CALL__INIT;
    call.body_case = POPCAST__SYNC_CALL__BODY_TAIL;
    call.tail = (Popcast__SignedTailBatch *)sb;
    nng_socket s;
    assert_int_equal(nng_req0_open(&s), 0);
    nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 5000);
    assert_int_equal(nng_dial(s, ctl.sync_url, NULL, 0), 0);
    size_t len = popcast__sync_call__get_packed_size(&call);
    uint8_t *buf = malloc(len);
    popcast__sync_call__pack(&call, buf);
    assert_int_equal(nng_send(s, buf, len, 0), 0);
    free(buf);
    char *rep = NULL;
    size_t rlen = 0;
    assert_int_equal(nng_recv(s, &rep, &rlen, NNG_FLAG_ALLOC), 0);
    Popcast__SyncReply *r = popcast__sync_reply__unpack(NULL, rlen, (uint8_t *)rep);
    nng_free(rep, rlen);
    nng_close(s);
    assert_non_null(r);
    assert_int_equal(r->body_case, POPCAST__SYNC_REPLY__BODY_TAIL_ACK);
    return r;
}

/* A batch claiming to be edge-t's with one line; signed by key (NULL:
 * unsigned). */
static Popcast__SyncReply *send_forged(const pc_signing_key *key, uint64_t counter)
{
    Popcast__TailRecord rec = POPCAST__TAIL_RECORD__INIT;
    rec.tenant = "printer";
    rec.kind = POPCAST__TAIL_KIND__TAIL_KIND_PRINT;
    rec.message = "forged";
    Popcast__TailRecord *recs[] = {&rec};
    Popcast__TailBatch b = POPCAST__TAIL_BATCH__INIT;
    b.agent_id = "edge-t";
    b.counter = counter;
    b.records = recs;
    b.n_records = 1;
    size_t len = popcast__tail_batch__get_packed_size(&b);
    uint8_t *bytes = malloc(len);
    popcast__tail_batch__pack(&b, bytes);
    uint8_t sig[PC_SIG_LEN];
    Popcast__SignedTailBatch sb = POPCAST__SIGNED_TAIL_BATCH__INIT;
    sb.batch.data = bytes;
    sb.batch.len = len;
    if (key != NULL) {
        pc_sign(key, PC_DOMAIN_TAIL, bytes, len, sig);
        sb.signature.data = sig;
        sb.signature.len = PC_SIG_LEN;
    }
    Popcast__SyncReply *r = sync_call(&sb);
    free(bytes);
    return r;
}

/* Hostile batches on the sync port: unsigned, signed by another key,
 * garbage, and a replay of the agent's own counter are refused, and no
 * line reaches the tail; a poll is answered with the tailed tenants. */
static void test_forged_batches_are_refused(void **state)
{
    (void)state;
    uint64_t refused = pc_test_controller_metric(&ctl, "popcast_tail_refused_total");
    Popcast__SyncReply *r = send_forged(NULL, UINT64_MAX - 2);
    assert_non_null(strstr(r->tail_ack->error, "signature"));
    popcast__sync_reply__free_unpacked(r, NULL);
    pc_signing_key other;
    assert_int_equal(pc_keygen(&other), PC_OK);
    r = send_forged(&other, UINT64_MAX - 1);
    assert_non_null(strstr(r->tail_ack->error, "signature"));
    popcast__sync_reply__free_unpacked(r, NULL);
    /* The agent's own key, with a counter the controller took already. */
    char key_path[400];
    snprintf(key_path, sizeof(key_path), "%s/agent.key", agent.dir);
    pc_signing_key mine;
    pc_err err;
    if (pc_key_read_secret(key_path, &mine, &err) == PC_OK) {
        r = send_forged(&mine, 1);
        assert_non_null(strstr(r->tail_ack->error, "replayed"));
        popcast__sync_reply__free_unpacked(r, NULL);
    } else {
        fail_msg("the agent's identity key is not at %s: %s", key_path, err.msg);
    }
    Popcast__SignedTailBatch junk = POPCAST__SIGNED_TAIL_BATCH__INIT;
    uint8_t garbage[] = {0xff, 0xff, 0xff, 0x01};
    junk.batch.data = garbage;
    junk.batch.len = sizeof(garbage);
    r = sync_call(&junk);
    assert_non_null(strstr(r->tail_ack->error, "decode"));
    popcast__sync_reply__free_unpacked(r, NULL);
    assert_int_equal(pc_test_controller_metric(&ctl, "popcast_tail_refused_total"), refused + 4);
    /* A poll: answered with the tenants tailed (the earlier tails'
     * watchers go once a write to them fails: printer at most). */
    Popcast__TailBatch empty = POPCAST__TAIL_BATCH__INIT;
    empty.agent_id = "someone";
    uint8_t buf[64];
    Popcast__SignedTailBatch poll = POPCAST__SIGNED_TAIL_BATCH__INIT;
    poll.batch.data = buf;
    poll.batch.len = popcast__tail_batch__pack(&empty, buf);
    r = sync_call(&poll);
    assert_string_equal(r->tail_ack->error, "");
    assert_true(r->tail_ack->n_tenants <= 1);
    if (r->tail_ack->n_tenants == 1)
        assert_string_equal(r->tail_ack->tenants[0], "printer");
    popcast__sync_reply__free_unpacked(r, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines_reach_the_tail),
        cmocka_unit_test(test_text_lines),
        cmocka_unit_test(test_drops_are_shown),
        cmocka_unit_test(test_scoped_and_bad),
        cmocka_unit_test(test_forged_batches_are_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
