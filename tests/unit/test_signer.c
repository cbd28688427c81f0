/* test_signer.c - the controller's signing keys (controller/signer.h):
 * which held key signs now, and that the chain of stored key rotations it
 * follows is the one agents accept. Runs on a real pc_store in a temporary
 * directory, with rotations applied as the controller's FSM applies them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "envelope.h"
#include "harness.h"
#include "signer.h"
#include "store.h"

static pc_signing_key root, k1, k2, stranger;

typedef struct fixture {
    char dir[256];
    pc_store *store;
} fixture;

static void fixture_open(fixture *f)
{
    pc_test_tmpdir(f->dir, sizeof(f->dir), "signer");
    pc_store_options opt = {.keep_history = true};
    pc_err err;
    if (pc_store_open(&f->store, f->dir, &opt, &err) != PC_OK)
        fail_msg("open %s: %s", f->dir, err.msg);
}

static void fixture_close(fixture *f)
{
    pc_store_close(f->store);
    pc_test_rm_rf(f->dir);
}

static uint64_t next_seq(pc_store *s)
{
    uint64_t seq = 0;
    pc_err err;
    assert_int_equal(pc_store_applied_seq(s, &seq, &err), PC_OK);
    return seq + 1;
}

/* Stores a rotation to `next` signed by `by` at the next seq (the store
 * checks no signature: what it holds is what the signer must judge).
 * tamper flips one byte of the signature after signing. Returns its seq. */
static uint64_t store_rotation(pc_store *s, const pc_signing_key *by, const pc_public_key *next,
                               bool tamper)
{
    Popcast__Manifest m = POPCAST__MANIFEST__INIT;
    m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION;
    m.seq = next_seq(s);
    m.created_unix_ms = 1000 + (int64_t)m.seq;
    m.next_public_key.data = (uint8_t *)next->pk;
    m.next_public_key.len = PC_PK_LEN;
    Popcast__SignedManifest sm;
    pc_err err;
    assert_int_equal(pc_envelope_sign_manifest(by, &m, &sm, &err), PC_OK);
    if (tamper)
        sm.signature.data[7] ^= 0x01;
    if (pc_store_apply(s, &sm, &m, NULL, 0, &err) != PC_OK)
        fail_msg("store rotation at seq %llu: %s", (unsigned long long)m.seq, err.msg);
    pc_envelope_signed_clear(&sm);
    return m.seq;
}

/* A signer holding keys[0..n) with roots {root} (NULL roots: the
 * default). */
static pc_signer *signer_new(pc_store *s, const pc_signing_key *keys, size_t n,
                             const pc_public_key *only_root)
{
    pc_keyring roots = {.count = 0};
    pc_err err;
    if (only_root != NULL)
        assert_int_equal(pc_keyring_add(&roots, only_root, &err), PC_OK);
    pc_signer *sg = NULL;
    if (pc_signer_new(&sg, s, keys, n, only_root ? &roots : NULL, &err) != PC_OK)
        fail_msg("signer: %s", err.msg);
    return sg;
}

static int count_rotation(void *arg, uint64_t seq, const pc_public_key *next,
                          const uint8_t signer_id[PC_KEY_ID_LEN], int64_t created_unix_ms)
{
    (void)seq;
    (void)next;
    (void)signer_id;
    (void)created_unix_ms;
    (*(int *)arg)++;
    return 0;
}

/* Every call that reads the chain fails with code, naming seq; nothing
 * hands out a key. */
static void expect_chain_refused(pc_signer *sg, int code, uint64_t seq)
{
    pc_err err;
    pc_public_key pub;
    char at[64];
    snprintf(at, sizeof(at), "seq %llu", (unsigned long long)seq);
    memset(&pub, 0, sizeof(pub));
    assert_int_equal(pc_signer_current_public(sg, &pub, NULL, &err), code);
    if (strstr(err.msg, at) == NULL)
        fail_msg("expected \"%s\" in: %s", at, err.msg);
    const pc_signing_key *key = &root;
    assert_int_equal(pc_signer_current(sg, &key, &err), code);
    int n = 0;
    assert_int_equal(pc_signer_foreach_rotation(sg, count_rotation, &n, &err), code);
    if (strstr(err.msg, at) == NULL)
        fail_msg("expected \"%s\" in: %s", at, err.msg);
}

/* signer.h: the stored rotations are judged as agents judge them, from the
 * root keys. A rotation that does not verify (its signature is damaged, or
 * an unknown key signed it) makes the signer refuse: pc_signer_new fails
 * (the controller does not start) and, if it arrives later, every call
 * that would pick a key fails instead of signing with a key the agents
 * refuse or with the one the broken rotation announced. */
static void test_stored_chain_must_verify(void **state)
{
    (void)state;
    const pc_signing_key held[] = {root, k1, k2};
    pc_err err;
    struct {
        const char *what;
        const pc_signing_key *by;
        bool tamper;
        int code;
    } bad[] = {
        {"damaged signature", &root, true, PC_E_BAD_SIGNATURE},
        {"unknown signer", &stranger, false, PC_E_UNTRUSTED_KEY},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        fixture f;
        fixture_open(&f);
        /* A good first rotation, then the bad one. */
        uint64_t good = store_rotation(f.store, &root, &k1.pub, false);
        pc_signer *sg = signer_new(f.store, held, 3, &root.pub);
        pc_public_key cur;
        uint64_t since = 0;
        assert_int_equal(pc_signer_current_public(sg, &cur, &since, &err), PC_OK);
        assert_int_equal(since, good);
        uint64_t seq = store_rotation(f.store, bad[i].by, &k2.pub, bad[i].tamper);
        print_message("%s at seq %llu\n", bad[i].what, (unsigned long long)seq);
        expect_chain_refused(sg, bad[i].code, seq);
        pc_signer_free(sg);
        /* A signer made on this store does not come into being. */
        sg = NULL;
        assert_int_equal(pc_signer_new(&sg, f.store, held, 3, NULL, &err), bad[i].code);
        assert_null(sg);
        if (strstr(err.msg, "seq") == NULL)
            fail_msg("%s: the error does not say which rotation: %s", bad[i].what, err.msg);
        fixture_close(&f);
    }
    /* Rule 2 of trust.h: after k1 -> k2, k1 may not sign a rotation. */
    fixture f;
    fixture_open(&f);
    store_rotation(f.store, &root, &k1.pub, false);
    store_rotation(f.store, &k1, &k2.pub, false);
    pc_signer *sg = signer_new(f.store, held, 3, &root.pub);
    uint64_t seq = store_rotation(f.store, &k1, &k1.pub, false);
    print_message("revoked signer at seq %llu\n", (unsigned long long)seq);
    expect_chain_refused(sg, PC_E_UNTRUSTED_KEY, seq);
    pc_signer_free(sg);
    fixture_close(&f);
}

/* The same chain with root_key set to another key than the one that
 * signed the first rotation: the controller is configured with roots the
 * agents (who trust the real root) would not match, and must say so. */
static void test_chain_checked_against_configured_roots(void **state)
{
    (void)state;
    fixture f;
    fixture_open(&f);
    uint64_t seq = store_rotation(f.store, &root, &k1.pub, false);
    const pc_signing_key held[] = {k2, k1};
    pc_keyring roots = {.count = 0};
    pc_err err;
    assert_int_equal(pc_keyring_add(&roots, &k2.pub, &err), PC_OK);
    pc_signer *sg = NULL;
    assert_int_equal(pc_signer_new(&sg, f.store, held, 2, &roots, &err), PC_E_UNTRUSTED_KEY);
    assert_null(sg);
    char at[64];
    snprintf(at, sizeof(at), "seq %llu", (unsigned long long)seq);
    if (strstr(err.msg, at) == NULL || strstr(err.msg, "root_key") == NULL)
        fail_msg("expected the seq and a hint at root_key in: %s", err.msg);
    /* With the real root among the roots it verifies. */
    assert_int_equal(pc_keyring_add(&roots, &root.pub, &err), PC_OK);
    assert_int_equal(pc_signer_new(&sg, f.store, held, 2, &roots, &err), PC_OK);
    pc_public_key cur;
    assert_int_equal(pc_signer_current_public(sg, &cur, NULL, &err), PC_OK);
    assert_memory_equal(cur.pk, k1.pub.pk, PC_PK_LEN);
    pc_signer_free(sg);
    fixture_close(&f);
}

static int setup(void **state)
{
    (void)state;
    pc_test_init();
    if (pc_keygen(&root) != PC_OK || pc_keygen(&k1) != PC_OK || pc_keygen(&k2) != PC_OK ||
        pc_keygen(&stranger) != PC_OK)
        return -1;
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stored_chain_must_verify),
        cmocka_unit_test(test_chain_checked_against_configured_roots),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
