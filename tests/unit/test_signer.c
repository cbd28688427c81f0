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

/* A change that is not a rotation (a delete: no bundle needed), to move
 * the seq on. */
static uint64_t store_delete(pc_store *s)
{
    Popcast__Manifest m = POPCAST__MANIFEST__INIT;
    m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE;
    m.seq = next_seq(s);
    m.tenant = "acme";
    m.version = m.seq;
    Popcast__SignedManifest sm;
    pc_err err;
    assert_int_equal(pc_envelope_sign_manifest(&root, &m, &sm, &err), PC_OK);
    assert_int_equal(pc_store_apply(s, &sm, &m, NULL, 0, &err), PC_OK);
    pc_envelope_signed_clear(&sm);
    return m.seq;
}

/* The emergency rotation without the root secret on a controller: signed
 * by the next key, carrying the root's authorization to replace
 * `replaces`. */
static uint64_t store_authorized_rotation(pc_store *s, const pc_signing_key *next,
                                          const pc_signing_key *by_root,
                                          const pc_public_key *replaces)
{
    Popcast__RotationAuthorization a = POPCAST__ROTATION_AUTHORIZATION__INIT;
    a.next_public_key.data = (uint8_t *)next->pub.pk;
    a.next_public_key.len = PC_PK_LEN;
    a.replaces_key_id.data = (uint8_t *)replaces->id;
    a.replaces_key_id.len = PC_KEY_ID_LEN;
    Popcast__SignedRotationAuthorization sa;
    pc_err err;
    assert_int_equal(pc_envelope_sign_authorization(by_root, &a, &sa, &err), PC_OK);
    Popcast__Manifest m = POPCAST__MANIFEST__INIT;
    m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION;
    m.seq = next_seq(s);
    m.created_unix_ms = 1000 + (int64_t)m.seq;
    m.next_public_key.data = (uint8_t *)next->pub.pk;
    m.next_public_key.len = PC_PK_LEN;
    Popcast__SignedManifest sm;
    assert_int_equal(pc_envelope_sign_manifest(next, &m, &sm, &err), PC_OK);
    sm.root_authorization = &sa;
    if (pc_store_apply(s, &sm, &m, NULL, 0, &err) != PC_OK)
        fail_msg("store authorized rotation: %s", err.msg);
    sm.root_authorization = NULL;
    pc_envelope_signed_clear(&sm);
    free(sa.authorization.data);
    free(sa.signature.data);
    free(sa.key_id.data);
    return m.seq;
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

static void expect_current(pc_signer *sg, const pc_signing_key *want, uint64_t want_since)
{
    pc_err err;
    pc_public_key pub;
    uint64_t since = 12345;
    if (pc_signer_current_public(sg, &pub, &since, &err) != PC_OK)
        fail_msg("current_public: %s", err.msg);
    assert_memory_equal(pub.pk, want->pub.pk, PC_PK_LEN);
    assert_memory_equal(pub.id, want->pub.id, PC_KEY_ID_LEN);
    assert_int_equal(since, want_since);
    const pc_signing_key *key = NULL;
    if (pc_signer_current(sg, &key, &err) != PC_OK)
        fail_msg("current: %s", err.msg);
    assert_non_null(key);
    assert_memory_equal(key->pub.pk, want->pub.pk, PC_PK_LEN);
    /* The held secret itself, not only a key with that public part. */
    assert_memory_equal(key->sk, want->sk, sizeof(want->sk));
}

/* Before any rotation the first HELD key (in signing_key order) that is a
 * root signs; with no held root, nothing signs: PC_E_UNAVAILABLE, and the
 * since seq is still set (0). */
static void test_current_before_any_rotation(void **state)
{
    (void)state;
    fixture f;
    fixture_open(&f);
    pc_err err;
    /* Roots {k2, root}; held {k1, root, k2}: root comes first among the
     * held roots, whatever the roots' order. */
    pc_keyring roots = {.count = 0};
    assert_int_equal(pc_keyring_add(&roots, &k2.pub, &err), PC_OK);
    assert_int_equal(pc_keyring_add(&roots, &root.pub, &err), PC_OK);
    const pc_signing_key held[] = {k1, root, k2};
    pc_signer *sg = NULL;
    assert_int_equal(pc_signer_new(&sg, f.store, held, 3, &roots, &err), PC_OK);
    expect_current(sg, &root, 0);
    pc_signer_free(sg);

    /* Changes that are not rotations do not make a key current. */
    store_delete(f.store);
    store_delete(f.store);
    const pc_signing_key held2[] = {k2, root};
    assert_int_equal(pc_signer_new(&sg, f.store, held2, 2, &roots, &err), PC_OK);
    expect_current(sg, &k2, 0);
    pc_signer_free(sg);

    /* Roots kept offline: none held. */
    const pc_signing_key no_root[] = {k1};
    assert_int_equal(pc_signer_new(&sg, f.store, no_root, 1, &roots, &err), PC_OK);
    pc_public_key pub;
    uint64_t since = 99;
    assert_int_equal(pc_signer_current_public(sg, &pub, &since, &err), PC_E_UNAVAILABLE);
    assert_int_equal(since, 0);
    assert_non_null(strstr(err.msg, "root"));
    const pc_signing_key *key = &k1;
    assert_int_equal(pc_signer_current(sg, &key, &err), PC_E_UNAVAILABLE);
    pc_signer_free(sg);

    /* At least one key. */
    sg = (pc_signer *)&err;
    assert_int_equal(pc_signer_new(&sg, f.store, held, 0, &roots, &err), PC_E_INVALID);
    assert_null(sg);
    fixture_close(&f);
}

/* After rotations the log decides: the last rotation's key signs, from the
 * seq of that rotation, whatever the configured order; the first held root
 * no longer does. */
static void test_current_after_rotations(void **state)
{
    (void)state;
    fixture f;
    fixture_open(&f);
    const pc_signing_key held[] = {root, k1, k2};
    pc_signer *sg = signer_new(f.store, held, 3, NULL);
    expect_current(sg, &root, 0);
    store_delete(f.store);
    uint64_t r1 = store_rotation(f.store, &root, &k1.pub, false); /* planned */
    expect_current(sg, &k1, r1);
    store_delete(f.store);
    expect_current(sg, &k1, r1);
    uint64_t r2 = store_rotation(f.store, &k1, &k2.pub, false);
    expect_current(sg, &k2, r2);
    /* An emergency rotation signed by the root, away from k2. */
    uint64_t r3 = store_rotation(f.store, &root, &k1.pub, false);
    expect_current(sg, &k1, r3);
    /* The offline path: signed by the next key with the root's
     * authorization to replace k1. */
    uint64_t r4 = store_authorized_rotation(f.store, &k2, &root, &k1.pub);
    expect_current(sg, &k2, r4);
    pc_signer_free(sg);
    /* A signer made later on the same store agrees (the controller after a
     * restart). */
    const pc_signing_key reordered[] = {k2, root};
    sg = signer_new(f.store, reordered, 2, &root.pub);
    expect_current(sg, &k2, r4);
    pc_signer_free(sg);
    fixture_close(&f);
}

/* The current key is not held: its public key is known, but nothing
 * signs (PC_E_UNAVAILABLE naming the key), rather than another key. */
static void test_current_key_not_held(void **state)
{
    (void)state;
    fixture f;
    fixture_open(&f);
    uint64_t r1 = store_rotation(f.store, &root, &k2.pub, false);
    const pc_signing_key held[] = {root, k1};
    pc_signer *sg = signer_new(f.store, held, 2, NULL);
    pc_err err;
    pc_public_key pub;
    uint64_t since = 0;
    assert_int_equal(pc_signer_current_public(sg, &pub, &since, &err), PC_OK);
    assert_memory_equal(pub.pk, k2.pub.pk, PC_PK_LEN);
    assert_int_equal(since, r1);
    const pc_signing_key *key = &root;
    assert_int_equal(pc_signer_current(sg, &key, &err), PC_E_UNAVAILABLE);
    char kid[PC_HEX_KEY_ID_LEN];
    pc_hex(kid, k2.pub.id, PC_KEY_ID_LEN);
    if (strstr(err.msg, kid) == NULL || strstr(err.msg, "signing_key") == NULL)
        fail_msg("expected key %s and a hint at signing_key in: %s", kid, err.msg);
    assert_null(key);
    assert_null(pc_signer_held(sg, k2.pub.pk));
    pc_signer_free(sg);
    fixture_close(&f);
}

/* Roots: by default the first signing key's public key (roots NULL or
 * empty); otherwise exactly the given ones. The held keys are copies. */
static void test_roots_and_held_keys(void **state)
{
    (void)state;
    fixture f;
    fixture_open(&f);
    pc_err err;
    pc_signing_key held[] = {k1, root};
    pc_signer *sg = signer_new(f.store, held, 2, NULL);
    const pc_keyring *ring = pc_signer_roots(sg);
    assert_int_equal(ring->count, 1);
    assert_memory_equal(ring->keys[0].pk, k1.pub.pk, PC_PK_LEN);
    assert_true(pc_signer_is_root(sg, k1.pub.pk));
    assert_false(pc_signer_is_root(sg, root.pub.pk));
    assert_true(pc_signer_is_root_id(sg, k1.pub.id));
    assert_false(pc_signer_is_root_id(sg, root.pub.id));
    expect_current(sg, &k1, 0);
    pc_signer_free(sg);

    pc_keyring empty = {.count = 0};
    assert_int_equal(pc_signer_new(&sg, f.store, held, 2, &empty, &err), PC_OK);
    assert_int_equal(pc_signer_roots(sg)->count, 1);
    assert_true(pc_signer_is_root(sg, k1.pub.pk));
    pc_signer_free(sg);

    pc_keyring roots = {.count = 0};
    assert_int_equal(pc_keyring_add(&roots, &root.pub, &err), PC_OK);
    assert_int_equal(pc_keyring_add(&roots, &stranger.pub, &err), PC_OK);
    assert_int_equal(pc_signer_new(&sg, f.store, held, 2, &roots, &err), PC_OK);
    assert_int_equal(pc_signer_roots(sg)->count, 2);
    assert_true(pc_signer_is_root(sg, stranger.pub.pk));
    assert_true(pc_signer_is_root_id(sg, stranger.pub.id));
    assert_false(pc_signer_is_root(sg, k1.pub.pk));
    /* A root need not be held; held keys need not be roots. */
    assert_null(pc_signer_held(sg, stranger.pub.pk));
    const pc_signing_key *h = pc_signer_held(sg, k1.pub.pk);
    assert_non_null(h);
    assert_memory_equal(h->sk, k1.sk, sizeof(k1.sk));
    /* The signer copied the keys: the caller may wipe its own. */
    pc_signing_key_wipe(&held[0]);
    pc_signing_key_wipe(&held[1]);
    h = pc_signer_held(sg, k1.pub.pk);
    assert_non_null(h);
    assert_memory_equal(h->sk, k1.sk, sizeof(k1.sk));
    expect_current(sg, &root, 0);
    pc_signer_free(sg);
    fixture_close(&f);
}

typedef struct seen_rotation {
    uint64_t seq;
    uint8_t next[PC_PK_LEN], next_id[PC_KEY_ID_LEN], by[PC_KEY_ID_LEN];
    int64_t created;
} seen_rotation;

typedef struct rotation_list {
    seen_rotation items[8];
    int n;
    int stop_at; /* return 7 at this call (1-based); 0: never */
} rotation_list;

static int collect_rotation(void *arg, uint64_t seq, const pc_public_key *next,
                            const uint8_t signer_id[PC_KEY_ID_LEN], int64_t created_unix_ms)
{
    rotation_list *l = arg;
    assert_true(l->n < 8);
    seen_rotation *r = &l->items[l->n++];
    r->seq = seq;
    memcpy(r->next, next->pk, PC_PK_LEN);
    memcpy(r->next_id, next->id, PC_KEY_ID_LEN);
    memcpy(r->by, signer_id, PC_KEY_ID_LEN);
    r->created = created_unix_ms;
    return l->n == l->stop_at ? 7 : 0;
}

/* foreach_rotation: every rotation in seq order, with the key it announced,
 * the key that signed it and its time; a callback's non-zero value stops
 * the walk and is returned (store.h). */
static void test_foreach_rotation_order(void **state)
{
    (void)state;
    fixture f;
    fixture_open(&f);
    const pc_signing_key held[] = {root};
    pc_signer *sg = signer_new(f.store, held, 1, NULL);
    pc_err err;
    rotation_list l = {.n = 0};
    assert_int_equal(pc_signer_foreach_rotation(sg, collect_rotation, &l, &err), PC_OK);
    assert_int_equal(l.n, 0);
    /* Enough changes between rotations that key order and seq order
     * differ from insertion luck: seqs 2, 5, 11. */
    store_delete(f.store);
    uint64_t r1 = store_rotation(f.store, &root, &k1.pub, false);
    store_delete(f.store);
    store_delete(f.store);
    uint64_t r2 = store_rotation(f.store, &k1, &k2.pub, false);
    for (int i = 0; i < 5; i++)
        store_delete(f.store);
    uint64_t r3 = store_authorized_rotation(f.store, &k1, &root, &k2.pub);
    assert_int_equal(r3, 11);
    const uint64_t seqs[] = {r1, r2, r3};
    const pc_signing_key *next[] = {&k1, &k2, &k1}, *by[] = {&root, &k1, &k1};
    assert_int_equal(pc_signer_foreach_rotation(sg, collect_rotation, &l, &err), PC_OK);
    assert_int_equal(l.n, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(l.items[i].seq, seqs[i]);
        assert_memory_equal(l.items[i].next, next[i]->pub.pk, PC_PK_LEN);
        assert_memory_equal(l.items[i].next_id, next[i]->pub.id, PC_KEY_ID_LEN);
        assert_memory_equal(l.items[i].by, by[i]->pub.id, PC_KEY_ID_LEN);
        assert_int_equal(l.items[i].created, 1000 + (int64_t)seqs[i]);
    }
    rotation_list stop = {.n = 0, .stop_at = 2};
    assert_int_equal(pc_signer_foreach_rotation(sg, collect_rotation, &stop, &err), 7);
    assert_int_equal(stop.n, 2);
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
        cmocka_unit_test(test_current_before_any_rotation),
        cmocka_unit_test(test_current_after_rotations),
        cmocka_unit_test(test_current_key_not_held),
        cmocka_unit_test(test_roots_and_held_keys),
        cmocka_unit_test(test_foreach_rotation_order),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
