/* test_key_chain.c - a daemon whose store holds a key rotation that does
 * not verify refuses to start.
 *
 * The chain of signing keys is rebuilt from the store at start-up
 * (store.h invariant 6): the agent judges it against its trusted keys
 * (common/trust.h), the controller against its root keys
 * (controller/signer.h). A damaged or forged rotation record must stop the
 * daemon with a clear message, never be skipped: an agent that skipped one
 * would follow a chain with a hole (refusing the real key, or accepting
 * a revoked one), a controller would sign with a key agents refuse.
 *
 * The records are damaged with the store API while the daemon is stopped
 * (a bit flip in the rotation's signature, or a rotation signed by a key
 * nobody trusts); restoring the original bytes makes the daemon start and
 * serve again, so the refusal is about the record and nothing else. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "envelope.h"
#include "harness.h"
#include "store.h"

static pc_test_env env;
static pc_test_controller ctl;
static pc_test_agent agent;
static pc_signing_key k2, stranger;
static char k2_secret[400], k2_pub[400];
static uint64_t rotation_seq, last_version;

static void deploy(const char *text)
{
    char src[256];
    pc_test_lua_hello(src, sizeof(src), text);
    last_version = pc_test_deploy_lua(&env, &ctl, "app", src);
    assert_true(pc_test_wait_version(&agent, "app", last_version, PC_TEST_CONVERGE_TIMEOUT_MS));
}

static void expect_agent_key(const pc_signing_key *k)
{
    char want[PC_HEX_KEY_ID_LEN];
    pc_hex(want, k->pub.id, PC_KEY_ID_LEN);
    json_t *s = pc_test_agent_status(&agent);
    assert_non_null(s);
    const char *got = json_string_value(json_object_get(s, "signing_key"));
    assert_non_null(got);
    assert_string_equal(got, want);
    json_decref(s);
}

static const char *const controller_extra[] = {"--signing-key", k2_secret, NULL};

/* A controller holding the root and K2; an agent; v1 by the root, the
 * rotation root -> K2, v2 by K2, all applied by the agent. */
static int setup(void **state)
{
    (void)state;
    pc_test_env_init(&env);
    memset(&ctl, 0, sizeof(ctl));
    memset(&agent, 0, sizeof(agent));
    pc_err err;
    assert_int_equal(pc_keygen(&k2), PC_OK);
    assert_int_equal(pc_keygen(&stranger), PC_OK);
    snprintf(k2_secret, sizeof(k2_secret), "%s/k2.key", env.root);
    snprintf(k2_pub, sizeof(k2_pub), "%s/k2.pub", env.root);
    assert_int_equal(pc_key_write_secret(k2_secret, &k2, &err), PC_OK);
    assert_int_equal(pc_key_write_public(k2_pub, &k2.pub, &err), PC_OK);
    pc_test_controller_start(&env, &ctl, controller_extra);
    pc_test_agent_start_for(&env, &agent, "edge-1", &ctl, NULL);
    deploy("v1 by the root");
    char out[2048];
    const char *args[] = {"key", "rotate", k2_pub, "--json", NULL};
    if (pc_test_cli(&env, &ctl, args, out, sizeof(out)) != 0)
        fail_msg("key rotate failed: %s", out);
    json_t *doc = json_loads(out, 0, NULL);
    assert_non_null(doc);
    rotation_seq = (uint64_t)json_integer_value(json_object_get(doc, "seq"));
    json_decref(doc);
    assert_true(rotation_seq > 0);
    deploy("v2 by k2");
    expect_agent_key(&k2);
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

/* The stored rotation record (a LogRecord) of the daemon's store in dir:
 * *orig gets its bytes (malloc'd). */
static void read_rotation(const char *dir, uint8_t **orig, size_t *len)
{
    char key[64];
    snprintf(key, sizeof(key), PC_STORE_ROTATION_PREFIX "%020llu",
             (unsigned long long)rotation_seq);
    pc_store *s = NULL;
    pc_err err;
    if (pc_store_open(&s, dir, NULL, &err) != PC_OK)
        fail_msg("open %s: %s", dir, err.msg);
    uint8_t buf[4096];
    assert_int_equal(pc_store_meta_get(s, key, buf, sizeof(buf), len, &err), PC_OK);
    assert_true(*len <= sizeof(buf));
    *orig = malloc(*len);
    assert_non_null(*orig);
    memcpy(*orig, buf, *len);
    pc_store_close(s);
}

static void write_rotation(const char *dir, const uint8_t *val, size_t len)
{
    char key[64];
    snprintf(key, sizeof(key), PC_STORE_ROTATION_PREFIX "%020llu",
             (unsigned long long)rotation_seq);
    pc_store *s = NULL;
    pc_err err;
    if (pc_store_open(&s, dir, NULL, &err) != PC_OK)
        fail_msg("open %s: %s", dir, err.msg);
    assert_int_equal(pc_store_meta_put(s, key, val, len, &err), PC_OK);
    pc_store_close(s);
}

/* The record with one bit of its signature flipped. */
static uint8_t *tampered(const uint8_t *orig, size_t len, size_t *out_len)
{
    Popcast__LogRecord *rec = popcast__log_record__unpack(NULL, len, orig);
    assert_non_null(rec);
    assert_non_null(rec->signed_);
    assert_int_equal(rec->signed_->signature.len, PC_SIG_LEN);
    rec->signed_->signature.data[PC_SIG_LEN / 2] ^= 0x20;
    *out_len = popcast__log_record__get_packed_size(rec);
    uint8_t *buf = malloc(*out_len);
    assert_non_null(buf);
    popcast__log_record__pack(rec, buf);
    popcast__log_record__free_unpacked(rec, NULL);
    return buf;
}

/* A well-formed rotation at the same seq to K2, signed by a key nobody
 * trusts. */
static uint8_t *forged(size_t *out_len)
{
    Popcast__Manifest m = POPCAST__MANIFEST__INIT;
    m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION;
    m.seq = rotation_seq;
    m.next_public_key.data = k2.pub.pk;
    m.next_public_key.len = PC_PK_LEN;
    Popcast__SignedManifest sm;
    pc_err err;
    assert_int_equal(pc_envelope_sign_manifest(&stranger, &m, &sm, &err), PC_OK);
    Popcast__LogRecord rec = POPCAST__LOG_RECORD__INIT;
    rec.signed_ = &sm;
    *out_len = popcast__log_record__get_packed_size(&rec);
    uint8_t *buf = malloc(*out_len);
    assert_non_null(buf);
    popcast__log_record__pack(&rec, buf);
    pc_envelope_signed_clear(&sm);
    return buf;
}

/* Runs argv (a daemon that should refuse to start) until it exits; fails
 * unless it exited non-zero with every string of want in its log. */
static void expect_refusal(const char *name, char *const argv[], const char *const *want)
{
    char dir[300], log[400];
    pc_test_tmpdir(dir, sizeof(dir), "refused");
    snprintf(log, sizeof(log), "%s/%s.log", dir, name);
    pc_proc *p = pc_proc_spawn(name, argv, log);
    int64_t deadline = pc_test_now_ms() + PC_TEST_START_TIMEOUT_MS;
    while (pc_proc_alive(p) && pc_test_now_ms() < deadline)
        pc_test_sleep_ms(20);
    bool exited = !pc_proc_alive(p);
    int status = pc_proc_stop(p);
    pc_proc_free(p);
    char text[8192] = "";
    FILE *f = fopen(log, "r");
    if (f != NULL) {
        size_t n = fread(text, 1, sizeof(text) - 1, f);
        text[n] = '\0';
        fclose(f);
    }
    if (!exited)
        fail_msg("%s started with a store whose key chain does not verify: %s", name, text);
    if (!WIFEXITED(status) || WEXITSTATUS(status) == 0)
        fail_msg("%s did not exit with an error (status %d): %s", name, status, text);
    for (size_t i = 0; want[i] != NULL; i++)
        if (strstr(text, want[i]) == NULL)
            fail_msg("%s: expected \"%s\" in its log: %s", name, want[i], text);
    /* The refusal path frees what it allocated (the sanitizer build). */
    if (strstr(text, "Sanitizer") != NULL || strstr(text, "runtime error:") != NULL)
        fail_msg("%s: sanitizer report on the way out: %s", name, text);
    print_message("%s refused to start: %s", name, text);
    pc_test_rm_rf(dir);
}

/* The agent's command line, as the harness starts it. */
static void agent_refuses(const char *const *want)
{
    char edge[64];
    snprintf(edge, sizeof(edge), "127.0.0.1:%d", agent.edge_port);
    char *argv[] = {getenv("POPCAST_AGENT_BIN"),
                    "--data-dir",
                    agent.dir,
                    "--agent-id",
                    agent.id,
                    "--edge-listen",
                    edge,
                    "--admin-listen",
                    agent.admin_url,
                    "--trusted-key",
                    env.pub_path,
                    "--allow-plaintext",
                    "--subscribe",
                    ctl.pub_url,
                    "--sync",
                    ctl.sync_url,
                    NULL};
    expect_refusal("agent", argv, want);
}

static void test_agent_refuses_a_chain_that_does_not_verify(void **state)
{
    (void)state;
    pc_test_agent_stop(&agent);
    uint8_t *orig = NULL;
    size_t orig_len = 0;
    read_rotation(agent.dir, &orig, &orig_len);
    char at[64];
    snprintf(at, sizeof(at), "key rotation at seq %llu", (unsigned long long)rotation_seq);

    /* One flipped bit in the rotation's signature. */
    size_t len = 0;
    uint8_t *bad = tampered(orig, orig_len, &len);
    write_rotation(agent.dir, bad, len);
    free(bad);
    const char *want_sig[] = {at, "does not verify", "trusted_key", NULL};
    agent_refuses(want_sig);

    /* A rotation signed by a key the agent never trusted. */
    bad = forged(&len);
    write_rotation(agent.dir, bad, len);
    free(bad);
    const char *want_key[] = {at, "unknown key", "trusted_key", NULL};
    agent_refuses(want_key);

    /* The original record: the agent starts, follows K2 and serves. */
    write_rotation(agent.dir, orig, orig_len);
    free(orig);
    pc_test_agent_start_for(&env, &agent, "edge-1", &ctl, NULL);
    expect_agent_key(&k2);
    assert_true(pc_test_wait_version(&agent, "app", last_version, PC_TEST_CONVERGE_TIMEOUT_MS));
    deploy("v3 by k2, after the agent restarted");
}

static void controller_refuses(const char *const *want)
{
    char *argv[] = {getenv("POPCAST_CONTROLLER_BIN"),
                    "--data-dir",
                    ctl.dir,
                    "--api-listen",
                    ctl.api_url,
                    "--pub-listen",
                    ctl.pub_url,
                    "--sync-listen",
                    ctl.sync_url,
                    "--raft-listen",
                    ctl.raft_address,
                    "--allow-plaintext",
                    "--signing-key",
                    env.key_path,
                    "--signing-key",
                    k2_secret,
                    "--admin-token-file",
                    env.token_path,
                    NULL};
    expect_refusal("controller", argv, want);
}

static void test_controller_refuses_a_chain_that_does_not_verify(void **state)
{
    (void)state;
    pc_test_controller_stop(&ctl);
    uint8_t *orig = NULL;
    size_t orig_len = 0;
    read_rotation(ctl.dir, &orig, &orig_len);
    char at[64];
    snprintf(at, sizeof(at), "key rotation at seq %llu", (unsigned long long)rotation_seq);

    size_t len = 0;
    uint8_t *bad = tampered(orig, orig_len, &len);
    write_rotation(ctl.dir, bad, len);
    free(bad);
    const char *want_sig[] = {at, "does not verify", "root_key", NULL};
    controller_refuses(want_sig);

    bad = forged(&len);
    write_rotation(ctl.dir, bad, len);
    free(bad);
    const char *want_key[] = {at, "unknown key", "root_key", NULL};
    controller_refuses(want_key);

    /* The original record: the controller starts and signs with K2. */
    write_rotation(ctl.dir, orig, orig_len);
    free(orig);
    pc_test_controller_start(&env, &ctl, controller_extra);
    deploy("v4 by k2, after the controller restarted");
    expect_agent_key(&k2);
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_agent_refuses_a_chain_that_does_not_verify),
        cmocka_unit_test(test_controller_refuses_a_chain_that_does_not_verify),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
