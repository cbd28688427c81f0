/* test_hostile_wire.c - a rogue publisher on the agent's subscription
 * sends entries signed by an untrusted key, tampered bundles, replays of
 * older versions, and garbage. None is applied, each is counted, and the
 * agent keeps serving (and keeps following the real controller). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>

#include "bundle.h"
#include "clock.h"
#include "envelope.h"
#include "harness.h"
#include "tls.h"

static pc_test_env env;
static pc_test_controller ctl;
static pc_test_agent agent;
static nng_socket rogue;
static char rogue_url[64];

static int setup(void **state)
{
    pc_test_env_init(&env);
    memset(&ctl, 0, sizeof(ctl));
    memset(&agent, 0, sizeof(agent));
    pc_test_controller_start(&env, &ctl, NULL);
    assert_int_equal(nng_pub0_open(&rogue), 0);
    pc_err lerr;
    if (pc_nng_listen_bound(rogue, "tcp://127.0.0.1:0", NULL, rogue_url, sizeof(rogue_url),
                            &lerr) != PC_OK)
        fail_msg("rogue publisher: %s", lerr.msg);
    const char *subs[] = {ctl.pub_url, rogue_url, NULL};
    const char *syncs[] = {ctl.sync_url, NULL};
    pc_test_agent_start(&env, &agent, "victim", subs, syncs, NULL);
    return 0;
}

static int teardown(void **state)
{
    nng_close(rogue);
    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
    return 0;
}

static void publish(const uint8_t *data, size_t len)
{
    assert_int_equal(nng_send(rogue, (void *)data, len, 0), 0);
}

static void publish_entry(const Popcast__SignedManifest *sm, const uint8_t *bundle, size_t len)
{
    Popcast__Entry e = POPCAST__ENTRY__INIT;
    e.signed_ = (Popcast__SignedManifest *)sm;
    e.bundle.data = (uint8_t *)bundle;
    e.bundle.len = len;
    Popcast__Publication pub = POPCAST__PUBLICATION__INIT;
    pub.body_case = POPCAST__PUBLICATION__BODY_ENTRY;
    pub.entry = &e;
    size_t n = popcast__publication__get_packed_size(&pub);
    uint8_t *buf = malloc(n);
    popcast__publication__pack(&pub, buf);
    publish(buf, n);
    free(buf);
}

/* pub/sub gives no delivery guarantee, and the agent may not be connected
 * to the rogue yet: resend until the refusal counter moves. */
typedef void (*sender)(void *arg);
static void send_until_counted(sender send, void *arg, const char *metric)
{
    uint64_t before = pc_test_agent_metric(&agent, metric);
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (pc_test_now_ms() < deadline) {
        send(arg);
        pc_test_sleep_ms(100);
        if (pc_test_agent_metric(&agent, metric) > before)
            return;
    }
    pc_proc_dump_log(agent.proc);
    fail_msg("agent never counted %s", metric);
}

typedef struct forged {
    Popcast__SignedManifest sm;
    uint8_t *bundle;
    size_t len;
} forged;

static void send_forged(void *arg)
{
    forged *f = arg;
    publish_entry(&f->sm, f->bundle, f->len);
}

/* An entry for tenant acme, signed by key, with the given seq/version. */
static void forge(forged *f, const pc_signing_key *key, uint64_t seq, uint64_t version,
                  const char *body)
{
    char src[256];
    pc_test_lua_hello(src, sizeof(src), body);
    assert_int_equal(pc_bundle_pack_single("main.lua", (const uint8_t *)src, strlen(src),
                                           &f->bundle, &f->len, NULL),
                     PC_OK);
    uint8_t hash[PC_HASH_LEN];
    pc_hash(hash, f->bundle, f->len);
    Popcast__Manifest m = POPCAST__MANIFEST__INIT;
    m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY;
    m.tenant = "acme";
    m.version = version;
    m.seq = seq;
    m.bundle_hash.data = hash;
    m.bundle_hash.len = PC_HASH_LEN;
    m.bundle_size = f->len;
    m.entrypoint = "main.lua";
    m.runtime = "lua";
    assert_int_equal(pc_envelope_sign_manifest(key, &m, &f->sm, NULL), PC_OK);
}

static void forged_free(forged *f)
{
    pc_envelope_signed_clear(&f->sm);
    free(f->bundle);
}

static void expect_still_v1(void)
{
    char body[128];
    uint64_t v = 0;
    assert_int_equal(pc_test_edge_get(&agent, "acme", "/", &v, body, sizeof(body)), 200);
    assert_int_equal(v, 1);
    assert_string_equal(body, "genuine v1");
    json_t *s = pc_test_agent_status(&agent);
    assert_non_null(s);
    assert_int_equal(json_integer_value(json_object_get(s, "applied_seq")), 1);
    json_decref(s);
}

static void test_deploy_genuine_v1(void **state)
{
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "genuine v1");
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "acme", src), 1);
    assert_true(pc_test_wait_version(&agent, "acme", 1, PC_TEST_CONVERGE_TIMEOUT_MS));
}

static void test_untrusted_key(void **state)
{
    pc_signing_key evil;
    assert_int_equal(pc_keygen(&evil), PC_OK);
    forged f;
    forge(&f, &evil, 2, 2, "evil");
    send_until_counted(send_forged, &f, "popcast_agent_refused_total{reason=\"untrusted_key\"}");
    /* Claiming the trusted key's id does not help either. */
    memcpy(f.sm.key_id.data, env.key.pub.id, PC_KEY_ID_LEN);
    send_until_counted(send_forged, &f, "popcast_agent_refused_total{reason=\"bad_signature\"}");
    forged_free(&f);
    expect_still_v1();
}

static void test_tampered_bundle_and_signature(void **state)
{
    forged f;
    forge(&f, &env.key, 2, 2, "tampered");
    /* Flip a byte of the Lua source inside the archive. */
    f.bundle[f.len - 10] ^= 0x20;
    send_until_counted(send_forged, &f, "popcast_agent_refused_total{reason=\"hash_mismatch\"}");
    f.bundle[f.len - 10] ^= 0x20;
    f.sm.signature.data[5] ^= 1;
    send_until_counted(send_forged, &f, "popcast_agent_refused_total{reason=\"bad_signature\"}");
    f.sm.signature.data[5] ^= 1;
    f.sm.manifest.data[f.sm.manifest.len / 2] ^= 1;
    send_until_counted(send_forged, &f, "popcast_agent_refused_total{reason=\"bad_signature\"}");
    forged_free(&f);
    expect_still_v1();
}

static void test_replays(void **state)
{
    /* A replay of the applied entry (same seq): ignored as a duplicate. */
    forged f;
    forge(&f, &env.key, 1, 1, "genuine v1");
    send_until_counted(send_forged, &f, "popcast_agent_refused_total{reason=\"duplicate\"}");
    forged_free(&f);
    /* An older version under the next seq (a validly signed rollback
     * attack): refused by the anti-rollback rule. */
    forge(&f, &env.key, 2, 1, "old content");
    send_until_counted(send_forged, &f, "popcast_agent_refused_total{reason=\"stale_version\"}");
    forged_free(&f);
    expect_still_v1();
    /* The refusal after verification is reported as a nack. */
    json_t *s = pc_test_agent_status(&agent);
    json_t *nacks = json_object_get(s, "nacks");
    assert_true(json_array_size(nacks) >= 1);
    int found = 0;
    size_t i;
    json_t *n;
    json_array_foreach(nacks, i, n) found |=
        strcmp(json_string_value(json_object_get(n, "reason")), "stale_version") == 0;
    assert_true(found);
    json_decref(s);
}

/* Mix and match: a genuinely signed manifest with another bundle's bytes,
 * and a manifest whose unsigned key hint names another key. */
typedef struct mixed {
    forged *manifest_of;
    forged *bundle_of;
} mixed;

static void send_mixed(void *arg)
{
    mixed *m = arg;
    publish_entry(&m->manifest_of->sm, m->bundle_of->bundle, m->bundle_of->len);
}

static void test_mix_and_match(void **state)
{
    forged a, b;
    forge(&a, &env.key, 2, 2, "tenant a's code");
    forge(&b, &env.key, 2, 2, "tenant b's code, other bytes");
    /* a's manifest (right tenant, next seq, valid signature) + b's bytes. */
    mixed m = {&a, &b};
    send_until_counted(send_mixed, &m, "popcast_agent_refused_total{reason=\"hash_mismatch\"}");
    /* The outer key hint swapped for another trusted-looking id: the
     * signature is checked against the key the hint names, and the inner
     * key id must equal it. */
    pc_signing_key other;
    assert_int_equal(pc_keygen(&other), PC_OK);
    uint8_t saved[PC_KEY_ID_LEN];
    memcpy(saved, a.sm.key_id.data, PC_KEY_ID_LEN);
    memcpy(a.sm.key_id.data, other.pub.id, PC_KEY_ID_LEN);
    send_until_counted(send_forged, &a, "popcast_agent_refused_total{reason=\"untrusted_key\"}");
    memcpy(a.sm.key_id.data, saved, PC_KEY_ID_LEN);
    forged_free(&a);
    forged_free(&b);
    expect_still_v1();
}

/* Heartbeats: a replayed (older) one and an expired one prove nothing and
 * are refused. Both are signed with the trusted key. */
typedef struct hb_args {
    int64_t time_ms, expires_ms;
} hb_args;

static void send_heartbeat(void *arg)
{
    hb_args *h = arg;
    Popcast__Heartbeat hb = POPCAST__HEARTBEAT__INIT;
    hb.head_seq = 1;
    hb.time_unix_ms = h->time_ms;
    hb.expires_unix_ms = h->expires_ms;
    hb.controller_id = "rogue";
    Popcast__SignedHeartbeat sh;
    assert_int_equal(pc_envelope_sign_heartbeat(&env.key, &hb, &sh, NULL), PC_OK);
    Popcast__Publication pub = POPCAST__PUBLICATION__INIT;
    pub.body_case = POPCAST__PUBLICATION__BODY_HEARTBEAT;
    pub.heartbeat = &sh;
    uint8_t buf[512];
    size_t n = popcast__publication__pack(&pub, buf);
    publish(buf, n);
    free(sh.heartbeat.data);
    free(sh.signature.data);
    free(sh.key_id.data);
}

static void test_heartbeat_replay_and_expiry(void **state)
{
    int64_t now = pc_wall_ms();
    /* Older than the controller's real ones the agent already accepted. */
    hb_args old = {now - 3600 * 1000, now + 3600 * 1000};
    send_until_counted(send_heartbeat, &old,
                       "popcast_agent_heartbeats_refused_total{reason=\"replayed\"}");
    /* Newer (and within the clock skew), but already expired. */
    hb_args expired = {now + 5 * 1000, now - 1000};
    send_until_counted(send_heartbeat, &expired,
                       "popcast_agent_heartbeats_refused_total{reason=\"expired\"}");
    expect_still_v1();
}

/* A heartbeat signed by the current key but dated ten years ahead: taken,
 * it would become the floor every later heartbeat must pass, leaving the
 * agent stale until a restart, even after that key is rotated away. It is
 * refused (beyond max_clock_skew_ms), and the controller's heartbeats
 * keep being accepted. */
static void test_heartbeat_from_the_future(void **state)
{
    int64_t now = pc_wall_ms();
    int64_t ten_years = 10LL * 365 * 24 * 3600 * 1000;
    hb_args future = {now + ten_years, now + ten_years + 60 * 1000};
    send_until_counted(send_heartbeat, &future,
                       "popcast_agent_heartbeats_refused_total{reason=\"future\"}");
    uint64_t before = pc_test_agent_metric(&agent, "popcast_agent_heartbeats_total");
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (pc_test_agent_metric(&agent, "popcast_agent_heartbeats_total") < before + 3 &&
           pc_test_now_ms() < deadline)
        pc_test_sleep_ms(50);
    if (pc_test_agent_metric(&agent, "popcast_agent_heartbeats_total") < before + 3) {
        pc_proc_dump_log(agent.proc);
        fail_msg("the controller's heartbeats are no longer accepted");
    }
    json_t *s = pc_test_agent_status(&agent);
    assert_non_null(s);
    assert_false(json_is_true(json_object_get(s, "stale")));
    json_decref(s);
    expect_still_v1();
}

/* The controller's count of catch-up requests served. */
static uint64_t controller_syncs(void)
{
    pc_http_result r;
    assert_int_equal(pc_http_call(ctl.api_url, "GET", "/metrics", NULL, NULL, 0, 10000, &r, NULL),
                     PC_OK);
    const char *key = "popcast_sync_requests_total{kind=\"sync\"} ";
    const char *at = r.body ? strstr((const char *)r.body, key) : NULL;
    uint64_t n = at ? strtoull(at + strlen(key), NULL, 10) : 0;
    pc_http_result_free(&r);
    return n;
}

/* Entries far ahead and heartbeats, signed by a key the agent does not
 * know: either may come from a rotation it missed, so each makes it want
 * to catch up. A flood of them must not become a flood of catch-up
 * requests to the controller (one round, then a pause, while they find
 * nothing new). */
static void test_unknown_keys_do_not_drive_catch_up(void **state)
{
    pc_signing_key evil;
    assert_int_equal(pc_keygen(&evil), PC_OK);
    forged f;
    forge(&f, &evil, 1000000, 1000000, "far ahead");
    Popcast__Heartbeat hb = POPCAST__HEARTBEAT__INIT;
    hb.head_seq = 1000000;
    hb.time_unix_ms = pc_wall_ms();
    hb.expires_unix_ms = hb.time_unix_ms + 3600 * 1000;
    Popcast__SignedHeartbeat sh;
    assert_int_equal(pc_envelope_sign_heartbeat(&evil, &hb, &sh, NULL), PC_OK);
    Popcast__Publication pub = POPCAST__PUBLICATION__INIT;
    pub.body_case = POPCAST__PUBLICATION__BODY_HEARTBEAT;
    pub.heartbeat = &sh;
    uint8_t hbuf[512];
    size_t hlen = popcast__publication__pack(&pub, hbuf);
    send_until_counted(send_forged, &f, "popcast_agent_unverified_ahead_total");
    uint64_t claims = pc_test_agent_metric(&agent, "popcast_agent_unverified_ahead_total");
    uint64_t before = controller_syncs();
    int64_t t0 = pc_test_now_ms();
    while (pc_test_now_ms() - t0 < 2000) { /* the measurement window */
        send_forged(&f);
        publish(hbuf, hlen);
        pc_test_sleep_ms(1);
    }
    uint64_t syncs = controller_syncs() - before;
    claims = pc_test_agent_metric(&agent, "popcast_agent_unverified_ahead_total") - claims;
    fprintf(stderr, "%llu claims from an unknown key made %llu catch-up requests in 2 s\n",
            (unsigned long long)claims, (unsigned long long)syncs);
    assert_true(claims >= 100);
    /* One round per 250 ms at most, with slack: without the pause, one
     * round per claim, as fast as the controller answers. */
    assert_true(syncs <= 30);
    free(sh.heartbeat.data);
    free(sh.signature.data);
    free(sh.key_id.data);
    forged_free(&f);
    expect_still_v1();
}

static void send_garbage(void *arg)
{
    uint8_t junk[300];
    srand(1234);
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)rand();
    publish(junk, sizeof(junk));
}

static void send_empty_entry(void *arg)
{
    Popcast__Entry e = POPCAST__ENTRY__INIT;
    Popcast__Publication pub = POPCAST__PUBLICATION__INIT;
    pub.body_case = POPCAST__PUBLICATION__BODY_ENTRY;
    pub.entry = &e;
    uint8_t buf[16];
    size_t n = popcast__publication__pack(&pub, buf);
    publish(buf, n);
}

static void test_garbage(void **state)
{
    send_until_counted(send_garbage, NULL, "popcast_agent_refused_total{reason=\"invalid\"}");
    send_until_counted(send_empty_entry, NULL, "popcast_agent_refused_total{reason=\"invalid\"}");
    expect_still_v1();
}

static void test_still_follows_the_controller(void **state)
{
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "genuine v2");
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "acme", src), 2);
    assert_true(pc_test_wait_version(&agent, "acme", 2, PC_TEST_CONVERGE_TIMEOUT_MS));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deploy_genuine_v1),
        cmocka_unit_test(test_untrusted_key),
        cmocka_unit_test(test_tampered_bundle_and_signature),
        cmocka_unit_test(test_replays),
        cmocka_unit_test(test_mix_and_match),
        cmocka_unit_test(test_heartbeat_replay_and_expiry),
        cmocka_unit_test(test_heartbeat_from_the_future),
        cmocka_unit_test(test_unknown_keys_do_not_drive_catch_up),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_still_follows_the_controller),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
