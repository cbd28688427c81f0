/* test_keys.c - signing key rotation and revocation, end to end.
 *
 * The fleet starts trusting one root key R (the controller's first signing
 * key). The controller also holds K2, K3 and K4. Through the API and CLI:
 * R -> K2 (signed by R), K2 -> K3 (planned, signed by K2), then K3 is
 * "compromised" and the root revokes it: K3 -> K4 signed by R. After each
 * step the agents serve new deploys without a restart, and a rogue
 * publisher on the agent's subscription offers entries at exactly the next
 * seq signed by every key that must now be refused: revoked keys, the root
 * (which only signs rotations once one happened) and a key never
 * announced. Then an agent restart keeps the schedule, a fresh agent gets
 * the whole chain through a snapshot, and a controller restart keeps
 * signing with K4. Bad rotation requests change nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>
#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>

#include "bundle.h"
#include "envelope.h"
#include "harness.h"
#include "tls.h"

static pc_test_env env;
static pc_test_controller ctl;
static pc_test_agent agent, late;
static nng_socket rogue;
static char rogue_url[64];

typedef struct test_key {
    pc_signing_key key;
    char secret[400], pub[400];
} test_key;
static test_key k2, k3, k4, k5, stranger;

static void make_key(test_key *k, const char *name)
{
    pc_err err;
    assert_int_equal(pc_keygen(&k->key), PC_OK);
    snprintf(k->secret, sizeof(k->secret), "%s/%s.key", env.root, name);
    snprintf(k->pub, sizeof(k->pub), "%s/%s.pub", env.root, name);
    assert_int_equal(pc_key_write_secret(k->secret, &k->key, &err), PC_OK);
    assert_int_equal(pc_key_write_public(k->pub, &k->key.pub, &err), PC_OK);
}

static int setup(void **state)
{
    (void)state;
    pc_test_env_init(&env);
    memset(&ctl, 0, sizeof(ctl));
    memset(&agent, 0, sizeof(agent));
    memset(&late, 0, sizeof(late));
    make_key(&k2, "k2");
    make_key(&k3, "k3");
    make_key(&k4, "k4");
    make_key(&k5, "k5");
    make_key(&stranger, "stranger"); /* never given to the controller */
    const char *extra[] = {"--signing-key", k2.secret,       "--signing-key",
                           k3.secret,       "--signing-key", k4.secret,
                           "--signing-key", k5.secret,       NULL};
    pc_test_controller_start(&env, &ctl, extra);
    assert_int_equal(nng_pub0_open(&rogue), 0);
    pc_err lerr;
    if (pc_nng_listen_bound(rogue, "tcp://127.0.0.1:0", NULL, rogue_url, sizeof(rogue_url),
                            &lerr) != PC_OK)
        fail_msg("rogue publisher: %s", lerr.msg);
    const char *subs[] = {ctl.pub_url, rogue_url, NULL};
    const char *syncs[] = {ctl.sync_url, NULL};
    pc_test_agent_start(&env, &agent, "edge-1", subs, syncs, NULL);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    nng_close(rogue);
    pc_test_agent_stop(&agent);
    if (late.proc != NULL)
        pc_test_agent_stop(&late);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
    return 0;
}

static uint64_t status_u64(pc_test_agent *a, const char *field)
{
    json_t *s = pc_test_agent_status(a);
    assert_non_null(s);
    uint64_t v = (uint64_t)json_integer_value(json_object_get(s, field));
    json_decref(s);
    return v;
}

/* The key id the agent now requires ("" before any rotation). */
static void agent_signing_key(pc_test_agent *a, char *out, size_t cap)
{
    json_t *s = pc_test_agent_status(a);
    assert_non_null(s);
    const char *k = json_string_value(json_object_get(s, "signing_key"));
    snprintf(out, cap, "%s", k ? k : "");
    json_decref(s);
}

static void key_hex(const pc_signing_key *k, char out[PC_HEX_KEY_ID_LEN])
{
    pc_hex(out, k->pub.id, PC_KEY_ID_LEN);
}

/* A forged entry at seq: a deploy of tenant "app" (next is NULL) or a
 * rotation to next, signed by key. */
typedef struct forged {
    uint8_t *buf;
    size_t len;
} forged;

static void forge(forged *f, const pc_signing_key *key, uint64_t seq, const pc_public_key *next)
{
    Popcast__Manifest m = POPCAST__MANIFEST__INIT;
    uint8_t *bundle = NULL;
    size_t blen = 0;
    uint8_t hash[PC_HASH_LEN];
    if (next != NULL) {
        m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION;
        m.next_public_key.data = (uint8_t *)next->pk;
        m.next_public_key.len = PC_PK_LEN;
    } else {
        char src[256];
        pc_test_lua_hello(src, sizeof(src), "forged");
        assert_int_equal(pc_bundle_pack_single("main.lua", (const uint8_t *)src, strlen(src),
                                               &bundle, &blen, NULL),
                         PC_OK);
        pc_hash(hash, bundle, blen);
        m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY;
        m.tenant = "app";
        m.version = 1000;
        m.bundle_hash.data = hash;
        m.bundle_hash.len = PC_HASH_LEN;
        m.bundle_size = blen;
        m.entrypoint = "main.lua";
        m.runtime = "lua";
    }
    m.seq = seq;
    Popcast__SignedManifest sm;
    assert_int_equal(pc_envelope_sign_manifest(key, &m, &sm, NULL), PC_OK);
    Popcast__Entry e = POPCAST__ENTRY__INIT;
    e.signed_ = &sm;
    e.bundle.data = bundle;
    e.bundle.len = blen;
    Popcast__Publication pub = POPCAST__PUBLICATION__INIT;
    pub.body_case = POPCAST__PUBLICATION__BODY_ENTRY;
    pub.entry = &e;
    f->len = popcast__publication__get_packed_size(&pub);
    f->buf = malloc(f->len);
    popcast__publication__pack(&pub, f->buf);
    pc_envelope_signed_clear(&sm);
    free(bundle);
}

/* Offers the forged entry at the agent's next seq until the agent counts
 * it as refused for its key; then nothing may have changed. */
static void expect_refused(const pc_signing_key *key, const pc_public_key *next,
                           uint64_t live_version)
{
    uint64_t applied = status_u64(&agent, "applied_seq");
    forged f;
    forge(&f, key, applied + 1, next);
    const char *metric = "popcast_agent_refused_total{reason=\"untrusted_key\"}";
    uint64_t before = pc_test_agent_metric(&agent, metric);
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (pc_test_agent_metric(&agent, metric) == before && pc_test_now_ms() < deadline) {
        assert_int_equal(nng_send(rogue, f.buf, f.len, 0), 0);
        pc_test_sleep_ms(50);
    }
    free(f.buf);
    if (pc_test_agent_metric(&agent, metric) == before) {
        pc_proc_dump_log(agent.proc);
        fail_msg("the agent never refused the forged entry");
    }
    assert_int_equal(status_u64(&agent, "applied_seq"), applied);
    uint64_t v = 0;
    char body[64];
    assert_int_equal(pc_test_edge_get(&agent, "app", "/", &v, body, sizeof(body)), 200);
    assert_int_equal(v, live_version);
    assert_null(strstr(body, "forged"));
}

/* Rotates through the CLI (with an optional flag and its value); returns
 * the rotation's seq. */
static uint64_t rotate(const test_key *next, const char *flag, const char *value)
{
    char out[2048];
    const char *args_plain[] = {"key", "rotate", next->pub, "--json", NULL};
    const char *args_flag[] = {"key", "rotate", next->pub, flag, value, "--json", NULL};
    int rc = pc_test_cli(&env, &ctl, flag ? args_flag : args_plain, out, sizeof(out));
    if (rc != 0)
        fail_msg("key rotate failed (%d): %s", rc, out);
    json_t *doc = json_loads(out, 0, NULL);
    assert_non_null(doc);
    char kid[PC_HEX_KEY_ID_LEN];
    key_hex(&next->key, kid);
    assert_string_equal(json_string_value(json_object_get(doc, "key_id")), kid);
    uint64_t seq = (uint64_t)json_integer_value(json_object_get(doc, "seq"));
    json_decref(doc);
    assert_true(seq > 0);
    return seq;
}

/* `popcast key authorize ROOT NEXT --replaces ID` into a file. */
static void make_authorization(const char *root_secret, const test_key *next, const char *replaces,
                               char *path, size_t cap)
{
    char out[4096];
    const char *args[] = {"key", "authorize", root_secret, next->pub, "--replaces", replaces, NULL};
    if (pc_test_cli(&env, &ctl, args, out, sizeof(out)) != 0)
        fail_msg("key authorize failed: %s", out);
    assert_true(strncmp(out, "popcast-rotation-auth-v1 ", 25) == 0);
    static int n;
    snprintf(path, cap, "%s/auth-%d.txt", env.root, n++);
    pc_test_write_file(path, out, strlen(out));
}

static uint64_t deploy(const char *text)
{
    char src[256];
    pc_test_lua_hello(src, sizeof(src), text);
    uint64_t v = pc_test_deploy_lua(&env, &ctl, "app", src);
    assert_true(pc_test_wait_version(&agent, "app", v, PC_TEST_CONVERGE_TIMEOUT_MS));
    return v;
}

static void expect_agent_key(pc_test_agent *a, const pc_signing_key *k)
{
    char want[PC_HEX_KEY_ID_LEN], got[64];
    key_hex(k, want);
    agent_signing_key(a, got, sizeof(got));
    assert_string_equal(got, want);
}

/* A controller that may not sign: a deploy gets 503 naming why (and
 * nothing is committed); returns its GET /v1/keys document. */
static json_t *expect_cannot_sign(pc_test_controller *c, const char *why)
{
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "never signed");
    pc_http_result r;
    assert_int_equal(
        pc_test_api(&env, c, "POST", "/v1/tenants/app/bundles", "text/x-lua", src, strlen(src), &r),
        503);
    if (strstr((const char *)r.body, why) == NULL)
        fail_msg("expected \"%s\" in: %s", why, r.body);
    pc_http_result_free(&r);
    assert_int_equal(pc_test_api(&env, c, "GET", "/v1/keys", NULL, NULL, 0, &r), 200);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    assert_non_null(doc);
    return doc;
}

static void test_rotation_and_revocation(void **state)
{
    (void)state;
    const pc_signing_key *root = &env.key;
    char got[64];
    uint64_t v1 = deploy("v1 by root");
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "old, signed by the root");
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "old", src), 1);
    /* Forged entries take the agent's next seq: nothing real may be in
     * flight when they are offered. */
    assert_true(pc_test_wait_version(&agent, "old", 1, PC_TEST_CONVERGE_TIMEOUT_MS));
    agent_signing_key(&agent, got, sizeof(got));
    assert_string_equal(got, ""); /* no rotation yet: any root key */
    /* Before any rotation a key nobody announced is refused. */
    expect_refused(&k2.key, NULL, v1);

    /* R -> K2, signed by R (the current key). */
    uint64_t r1 = rotate(&k2, NULL, NULL);
    uint64_t v2 = deploy("v2 by k2");
    expect_agent_key(&agent, &k2.key);
    assert_true(status_u64(&agent, "applied_seq") > r1);
    /* The root signs nothing but rotations now; a stranger nothing. */
    expect_refused(root, NULL, v2);
    expect_refused(&stranger.key, NULL, v2);
    expect_refused(&stranger.key, &stranger.key.pub, v2);

    /* K2 -> K3, planned: signed by K2. K2 is then revoked. */
    rotate(&k3, NULL, NULL);
    uint64_t v3 = deploy("v3 by k3");
    expect_agent_key(&agent, &k3.key);
    expect_refused(&k2.key, NULL, v3);
    expect_refused(&k2.key, &stranger.key.pub, v3); /* a revoked key cannot rotate */

    /* K3 is compromised: the root revokes it by rotating to K4. */
    rotate(&k4, "--root-key", env.pub_path);
    uint64_t v4 = deploy("v4 by k4");
    expect_agent_key(&agent, &k4.key);
    expect_refused(&k3.key, NULL, v4);
    expect_refused(&k3.key, &stranger.key.pub, v4);
    expect_refused(&k2.key, NULL, v4);
    expect_refused(root, NULL, v4);

    /* K4 leaks too, and this time the root secret stays offline: the
     * operator signs a permission with it (`popcast key authorize`, no
     * controller involved) and the controller rotates with that. */
    char k4id[PC_HEX_KEY_ID_LEN], auth_path[400];
    key_hex(&k4.key, k4id);
    make_authorization(env.key_path, &k5, k4id, auth_path, sizeof(auth_path));
    rotate(&k5, "--authorization", auth_path);
    uint64_t v4b = deploy("v4b by k5");
    expect_agent_key(&agent, &k5.key);
    expect_refused(&k4.key, NULL, v4b);
    expect_refused(&k4.key, &stranger.key.pub, v4b);
    assert_true(pc_test_agent_metric(&agent, "popcast_agent_key_rotations_total") >= 4);

    /* A restart keeps the schedule: K4 stays refused, K5 signs. */
    pc_test_agent_stop(&agent);
    const char *subs[] = {ctl.pub_url, rogue_url, NULL};
    const char *syncs[] = {ctl.sync_url, NULL};
    pc_test_agent_start(&env, &agent, "edge-1", subs, syncs, NULL);
    expect_agent_key(&agent, &k5.key);
    assert_true(pc_test_wait_version(&agent, "app", v4b, PC_TEST_CONVERGE_TIMEOUT_MS));
    expect_refused(&k4.key, NULL, v4b);
    uint64_t v5 = deploy("v5 after agent restart");

    /* A fresh agent learns the chain from a snapshot, which also carries
     * tenant "old", last written under R: a manifest signed by a key that
     * is revoked now, valid because it is checked against its own seq. */
    const char *late_subs[] = {ctl.pub_url, NULL};
    pc_test_agent_start(&env, &late, "edge-late", late_subs, syncs, NULL);
    assert_true(pc_test_wait_version(&late, "app", v5, PC_TEST_CONVERGE_TIMEOUT_MS));
    assert_true(pc_test_wait_version(&late, "old", 1, PC_TEST_CONVERGE_TIMEOUT_MS));
    expect_agent_key(&late, &k5.key);
    assert_true(pc_test_agent_metric(&late, "popcast_agent_snapshots_installed_total") >= 1);

    /* The controller keeps signing with K5 after a restart. */
    pc_test_controller_stop(&ctl);
    const char *extra[] = {"--signing-key", k2.secret,       "--signing-key",
                           k3.secret,       "--signing-key", k4.secret,
                           "--signing-key", k5.secret,       NULL};
    pc_test_controller_start(&env, &ctl, extra);
    uint64_t v6 = deploy("v6 after controller restart");
    assert_true(pc_test_wait_version(&late, "app", v6, PC_TEST_CONVERGE_TIMEOUT_MS));
    expect_agent_key(&agent, &k5.key);
    pc_http_result r;
    assert_int_equal(pc_test_api(&env, &ctl, "GET", "/v1/keys", NULL, NULL, 0, &r), 200);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    assert_non_null(doc);
    char k5id[PC_HEX_KEY_ID_LEN];
    key_hex(&k5.key, k5id);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(doc, "current"), "key_id")), k5id);
    assert_int_equal(json_array_size(json_object_get(doc, "rotations")), 4);
    json_decref(doc);

    /* A controller started without the current key's secret refuses to
     * sign (clear error, nothing committed) rather than sign with another
     * key; given the key again, it writes. */
    pc_test_controller_stop(&ctl);
    pc_test_controller_start(&env, &ctl, NULL);
    doc = expect_cannot_sign(&ctl, "does not hold the current signing key");
    assert_false(json_is_true(json_object_get(json_object_get(doc, "current"), "held")));
    json_decref(doc);
    pc_test_deployed d;
    char src2[256];
    pc_test_lua_hello(src2, sizeof(src2), "signed again");
    pc_test_controller_stop(&ctl);
    pc_test_controller_start(&env, &ctl, extra);
    assert_int_equal(pc_test_try_deploy(&env, &ctl, "app", "text/x-lua", src2, strlen(src2), &d),
                     201);
    assert_int_equal(d.version, v6 + 1);
    assert_true(pc_test_wait_version(&agent, "app", d.version, PC_TEST_CONVERGE_TIMEOUT_MS));
}

/* In a 3-controller cluster the rotation is replicated: after the leader
 * dies, the new leader signs with the rotated key and agents follow. */
static void test_rotation_survives_failover(void **state)
{
    (void)state;
    pc_test_cluster cl;
    memset(&cl, 0, sizeof(cl));
    const char *extra[] = {"--signing-key", k2.secret, NULL};
    pc_test_cluster_init(&env, &cl, 3, 3, extra);
    int leader = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
    assert_true(leader >= 0);
    pc_test_agent edge;
    memset(&edge, 0, sizeof(edge));
    pc_test_agent_start_cluster(&env, &edge, "edge-c", &cl, NULL);
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "before");
    uint64_t v = pc_test_deploy_lua(&env, &cl.node[leader], "web", src);
    assert_true(pc_test_wait_version(&edge, "web", v, PC_TEST_CONVERGE_TIMEOUT_MS));
    char out[2048];
    const char *args[] = {"key", "rotate", k2.pub, NULL};
    if (pc_test_cli(&env, &cl.node[leader], args, out, sizeof(out)) != 0)
        fail_msg("rotate: %s", out);
    pc_test_lua_hello(src, sizeof(src), "after rotation");
    v = pc_test_deploy_lua(&env, &cl.node[leader], "web", src);
    assert_true(pc_test_wait_version(&edge, "web", v, PC_TEST_CONVERGE_TIMEOUT_MS));
    expect_agent_key(&edge, &k2.key);

    pc_proc_kill9(cl.node[leader].proc);
    pc_proc_free(cl.node[leader].proc);
    cl.node[leader].proc = NULL;
    int next = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
    assert_true(next >= 0 && next != leader);
    /* Every surviving node holds the rotation in its own store. A
     * follower may have the entry in its raft log but apply it only once
     * it learns it is committed (the next append from the new leader), so
     * each is polled, bounded. */
    char k2id[PC_HEX_KEY_ID_LEN];
    key_hex(&k2.key, k2id);
    for (int i = 0; i < 3; i++) {
        if (i == leader)
            continue;
        char seen[PC_HEX_KEY_ID_LEN] = "";
        int64_t until = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
        while (strcmp(seen, k2id) != 0 && pc_test_now_ms() < until) {
            pc_http_result r;
            int status = pc_test_api(&env, &cl.node[i], "GET", "/v1/keys", NULL, NULL, 0, &r);
            json_t *doc =
                status == 200 ? json_loadb((const char *)r.body, r.body_len, 0, NULL) : NULL;
            pc_http_result_free(&r);
            const char *id =
                json_string_value(json_object_get(json_object_get(doc, "current"), "key_id"));
            snprintf(seen, sizeof(seen), "%s", id ? id : "");
            json_decref(doc);
            if (strcmp(seen, k2id) != 0)
                pc_test_sleep_ms(50);
        }
        if (strcmp(seen, k2id) != 0)
            fail_msg("node %d's current key is %s, not the rotated %s", i + 1, seen, k2id);
    }
    pc_test_lua_hello(src, sizeof(src), "after failover");
    pc_test_deployed d;
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    int status = 0;
    /* The new leader may still be applying earlier terms' entries: 503
     * "not ready" is retried, anything else fails. */
    while ((status = pc_test_try_deploy(&env, &cl.node[next], "web", "text/x-lua", src, strlen(src),
                                        &d)) == 503 &&
           pc_test_now_ms() < deadline)
        pc_test_sleep_ms(100);
    assert_int_equal(status, 201);
    assert_true(pc_test_wait_version(&edge, "web", d.version, PC_TEST_CONVERGE_TIMEOUT_MS));
    expect_agent_key(&edge, &k2.key);
    pc_test_agent_stop(&edge);
    pc_test_cluster_stop(&cl);
}

/* Requests that must be refused, each leaving the log where it was. */
static void test_bad_rotations_change_nothing(void **state)
{
    (void)state;
    char text[128], body[512];
    pc_http_result r;
    assert_int_equal(pc_test_api(&env, &ctl, "GET", "/v1/keys", NULL, NULL, 0, &r), 200);
    json_t *before = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    uint64_t head = status_u64(&agent, "applied_seq");
    const char *bodies[6];
    char b_stranger[256], b_current[256], b_badroot[512];
    pc_key_format_public(&stranger.key.pub, text, sizeof(text));
    snprintf(b_stranger, sizeof(b_stranger), "{\"next_public_key\": \"%s\"}", text);
    pc_key_format_public(&k5.key.pub, text, sizeof(text));
    snprintf(b_current, sizeof(b_current), "{\"next_public_key\": \"%s\"}", text);
    char t2[128];
    pc_key_format_public(&k2.key.pub, t2, sizeof(t2));
    snprintf(b_badroot, sizeof(b_badroot), "{\"next_public_key\": \"%s\", \"root_key\": \"%s\"}",
             t2, text);
    bodies[0] = b_stranger;                           /* the controller lacks its secret */
    bodies[1] = b_current;                            /* already the signing key */
    bodies[2] = b_badroot;                            /* root_key is not a root */
    bodies[3] = "{\"next_public_key\": \"AAAA\"}";    /* not a key */
    bodies[4] = "{\"next_public_key\": 7, \"x\": 1}"; /* wrong shape */
    bodies[5] = "not json";
    /* Authorizations the controller must refuse: replacing a key that is
     * not current (K3), naming another next key, signed by a non-root. */
    char k3id[PC_HEX_KEY_ID_LEN], k5id[PC_HEX_KEY_ID_LEN], a_path[3][400];
    key_hex(&k3.key, k3id);
    key_hex(&k5.key, k5id);
    make_authorization(env.key_path, &k2, k3id, a_path[0], sizeof(a_path[0]));
    make_authorization(env.key_path, &k3, k5id, a_path[1], sizeof(a_path[1]));
    make_authorization(k4.secret, &k2, k5id, a_path[2], sizeof(a_path[2]));
    for (size_t i = 0; i < 3; i++) {
        char out[2048];
        const char *args[] = {"key", "rotate", k2.pub, "--authorization", a_path[i], NULL};
        if (pc_test_cli(&env, &ctl, args, out, sizeof(out)) == 0)
            fail_msg("authorization %zu was accepted: %s", i, out);
    }
    for (size_t i = 0; i < 6; i++) {
        snprintf(body, sizeof(body), "%s", bodies[i]);
        int status = pc_test_api(&env, &ctl, "POST", "/v1/keys/rotate", "application/json", body,
                                 strlen(body), &r);
        pc_http_result_free(&r);
        if (status != 400)
            fail_msg("body %zu got %d, want 400", i, status);
    }
    /* A tenant-scoped token may not rotate keys. */
    assert_int_equal(pc_test_api(&env, &ctl, "POST", "/v1/tokens", "application/json",
                                 "{\"tenants\": [\"app\"]}", 20, &r),
                     201);
    json_t *tok = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    char auth[200];
    snprintf(auth, sizeof(auth), "%s", json_string_value(json_object_get(tok, "token")));
    json_decref(tok);
    char bearer[220];
    snprintf(bearer, sizeof(bearer), "Bearer %s", auth);
    const char *headers[] = {"Authorization", bearer, "Content-Type", "application/json", NULL};
    pc_err err;
    assert_int_equal(pc_http_call(ctl.api_url, "POST", "/v1/keys/rotate", headers, b_current,
                                  strlen(b_current), 10000, &r, &err),
                     PC_OK);
    assert_int_equal(r.status, 403);
    pc_http_result_free(&r);
    /* Nothing moved. */
    assert_int_equal(pc_test_api(&env, &ctl, "GET", "/v1/keys", NULL, NULL, 0, &r), 200);
    json_t *after = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    assert_true(json_equal(before, after));
    json_decref(before);
    json_decref(after);
    pc_test_deploy_lua(&env, &ctl, "probe", "return function() return {status=200} end");
    /* The probe deploy's seq follows the head directly: no rotation slipped in. */
    assert_true(pc_test_wait_version(&agent, "probe", 1, PC_TEST_CONVERGE_TIMEOUT_MS));
    /* Tokens live in the controllers' raft state, not in the agents' log. */
    assert_int_equal(status_u64(&agent, "applied_seq"), head + 1);
}

/* Roots kept offline from the start: a controller that holds no root key
 * signs nothing until a root's offline authorization bootstraps its own
 * key; agents accept that rotation and everything the new key signs. */
static void test_offline_root_bootstrap(void **state)
{
    (void)state;
    pc_test_controller c2;
    pc_test_agent a2;
    memset(&c2, 0, sizeof(c2));
    memset(&a2, 0, sizeof(a2));
    /* The stranger key plays the offline root: c2 has only its public key
     * (its own signing keys are the env key, not a root for it, and K2). */
    const char *cextra[] = {"--root-key", stranger.pub, "--signing-key", k2.secret, NULL};
    pc_test_controller_start(&env, &c2, cextra);
    const char *aextra[] = {"--trusted-key", stranger.pub, NULL};
    pc_test_agent_start_for(&env, &a2, "edge-boot", &c2, aextra);
    json_t *doc = expect_cannot_sign(&c2, "holds none of the root keys");
    assert_true(json_is_null(json_object_get(doc, "current")));
    json_decref(doc);

    /* A rotation without the root's permission is refused too. */
    char out[4096];
    const char *plain[] = {"key", "rotate", k2.pub, NULL};
    assert_int_not_equal(pc_test_cli(&env, &c2, plain, out, sizeof(out)), 0);
    char root_id[PC_HEX_KEY_ID_LEN], auth_path[400];
    key_hex(&stranger.key, root_id);
    make_authorization(stranger.secret, &k2, root_id, auth_path, sizeof(auth_path));
    const char *with_auth[] = {"key", "rotate", k2.pub, "--authorization", auth_path, NULL};
    if (pc_test_cli(&env, &c2, with_auth, out, sizeof(out)) != 0)
        fail_msg("bootstrap rotation failed: %s", out);
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "bootstrapped");
    uint64_t v = pc_test_deploy_lua(&env, &c2, "boot", src);
    assert_true(pc_test_wait_version(&a2, "boot", v, PC_TEST_CONVERGE_TIMEOUT_MS));
    expect_agent_key(&a2, &k2.key);
    pc_test_agent_stop(&a2);
    pc_test_controller_stop(&c2);
}

/* A controller given a key option it cannot use must not start: it exits
 * non-zero and its log says why. */
static void expect_no_start(const char *flag, const char *path, const char *why)
{
    char dir[300], log[400], data[400];
    pc_test_tmpdir(dir, sizeof(dir), "badkey");
    snprintf(log, sizeof(log), "%s/controller.log", dir);
    snprintf(data, sizeof(data), "%s/data", dir);
    char *argv[] = {getenv("POPCAST_CONTROLLER_BIN"),
                    "--data-dir",
                    data,
                    "--allow-plaintext",
                    "--api-listen",
                    "http://127.0.0.1:1",
                    "--signing-key",
                    env.key_path,
                    (char *)flag,
                    (char *)path,
                    NULL};
    pc_proc *p = pc_proc_spawn("badkey", argv, log);
    int64_t deadline = pc_test_now_ms() + PC_TEST_START_TIMEOUT_MS;
    while (pc_proc_alive(p) && pc_test_now_ms() < deadline)
        pc_test_sleep_ms(20);
    int status = pc_proc_stop(p);
    pc_proc_free(p);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) != 0);
    size_t len = 0;
    FILE *f = fopen(log, "r");
    assert_non_null(f);
    char text[4096];
    len = fread(text, 1, sizeof(text) - 1, f);
    text[len] = '\0';
    fclose(f);
    if (strstr(text, why) == NULL)
        fail_msg("%s %s: expected \"%s\" in the log: %s", flag, path, why, text);
    pc_test_rm_rf(dir);
}

static void test_bad_key_configuration(void **state)
{
    (void)state;
    char missing[400];
    snprintf(missing, sizeof(missing), "%s/missing.pub", env.root);
    expect_no_start("--root-key", missing, "cannot open");
    expect_no_start("--root-key", k2.secret, "is not a popcast public key file");
    expect_no_start("--signing-key", k2.pub, k2.pub); /* a public key as a secret one */
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rotation_and_revocation),
        cmocka_unit_test(test_bad_rotations_change_nothing),
        cmocka_unit_test(test_rotation_survives_failover),
        cmocka_unit_test(test_offline_root_bootstrap),
        cmocka_unit_test(test_bad_key_configuration),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
