/* test_trust.c - the key schedule (common/trust.h): which key may sign
 * which entry, before and after rotations, planned and emergency. Every
 * rule of trust.h has a case here that fails if the rule is broken. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "crypto.h"
#include "envelope.h"
#include "harness.h"
#include "trust.h"

static pc_signing_key root, k1, k2, rogue;
static pc_keyring roots;

/* A signed delete (no bundle needed) or rotation, as an Entry. */
typedef struct signed_entry {
    Popcast__SignedManifest sm;
    Popcast__Entry e;
} signed_entry;

static void make_delete(signed_entry *se, const pc_signing_key *by, uint64_t seq)
{
    Popcast__Manifest m = POPCAST__MANIFEST__INIT;
    m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE;
    m.tenant = "acme";
    m.version = seq;
    m.seq = seq;
    pc_err err;
    assert_int_equal(pc_envelope_sign_manifest(by, &m, &se->sm, &err), PC_OK);
    popcast__entry__init(&se->e);
    se->e.signed_ = &se->sm;
}

static void make_rotation(signed_entry *se, const pc_signing_key *by, uint64_t seq,
                          const pc_public_key *next)
{
    Popcast__Manifest m = POPCAST__MANIFEST__INIT;
    m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION;
    m.seq = seq;
    m.next_public_key.data = (uint8_t *)next->pk;
    m.next_public_key.len = PC_PK_LEN;
    pc_err err;
    assert_int_equal(pc_envelope_sign_manifest(by, &m, &se->sm, &err), PC_OK);
    popcast__entry__init(&se->e);
    se->e.signed_ = &se->sm;
}

static int verify(const pc_trust *t, signed_entry *se, Popcast__Manifest **m)
{
    pc_err err;
    int rc = pc_trust_verify_entry(t, &se->e, 1 << 20, m, &err);
    if (rc != PC_OK)
        *m = NULL;
    return rc;
}

/* Verifies and, for a rotation, advances; frees everything. */
static int accept(pc_trust *t, const pc_signing_key *by, uint64_t seq, const pc_public_key *next)
{
    signed_entry se;
    if (next != NULL)
        make_rotation(&se, by, seq, next);
    else
        make_delete(&se, by, seq);
    Popcast__Manifest *m = NULL;
    int rc = verify(t, &se, &m);
    pc_err err;
    if (rc == PC_OK && next != NULL)
        assert_int_equal(pc_trust_advance(t, m, &err), PC_OK);
    if (m != NULL)
        popcast__manifest__free_unpacked(m, NULL);
    pc_envelope_signed_clear(&se.sm);
    return rc;
}

/* A rotation to next signed by `by`, carrying root_signer's offline
 * authorization to replace `replaces` by auth_next. */
static int accept_authorized(pc_trust *t, const pc_signing_key *by, uint64_t seq,
                             const pc_public_key *next, const pc_signing_key *root_signer,
                             const pc_public_key *auth_next, const pc_public_key *replaces)
{
    Popcast__RotationAuthorization a = POPCAST__ROTATION_AUTHORIZATION__INIT;
    a.next_public_key.data = (uint8_t *)auth_next->pk;
    a.next_public_key.len = PC_PK_LEN;
    a.replaces_key_id.data = (uint8_t *)replaces->id;
    a.replaces_key_id.len = PC_KEY_ID_LEN;
    Popcast__SignedRotationAuthorization sa;
    pc_err err;
    assert_int_equal(pc_envelope_sign_authorization(root_signer, &a, &sa, &err), PC_OK);
    /* Through the text form, as operators carry it. */
    char *text = NULL;
    assert_int_equal(pc_authorization_format(&sa, &text, &err), PC_OK);
    Popcast__SignedRotationAuthorization *parsed = NULL;
    assert_int_equal(pc_authorization_parse(text, &parsed, &err), PC_OK);
    free(text);
    signed_entry se;
    make_rotation(&se, by, seq, next);
    se.sm.root_authorization = parsed;
    Popcast__Manifest *m = NULL;
    int rc = verify(t, &se, &m);
    if (rc == PC_OK)
        assert_int_equal(pc_trust_advance(t, m, &err), PC_OK);
    if (m != NULL)
        popcast__manifest__free_unpacked(m, NULL);
    se.sm.root_authorization = NULL;
    pc_envelope_signed_clear(&se.sm);
    popcast__signed_rotation_authorization__free_unpacked(parsed, NULL);
    free(sa.authorization.data);
    free(sa.signature.data);
    free(sa.key_id.data);
    return rc;
}

static int setup(void **state)
{
    (void)state;
    pc_test_init();
    assert_int_equal(pc_keygen(&root), PC_OK);
    assert_int_equal(pc_keygen(&k1), PC_OK);
    assert_int_equal(pc_keygen(&k2), PC_OK);
    assert_int_equal(pc_keygen(&rogue), PC_OK);
    memset(&roots, 0, sizeof(roots));
    assert_int_equal(pc_keyring_add(&roots, &root.pub, NULL), PC_OK);
    return 0;
}

/* Rule 1: before any rotation, root keys sign; nothing else does. */
static void test_roots_before_rotation(void **state)
{
    (void)state;
    pc_trust t;
    pc_trust_init(&t, &roots);
    assert_null(pc_trust_current(&t));
    assert_int_equal(accept(&t, &root, 1, NULL), PC_OK);
    assert_int_equal(accept(&t, &k1, 2, NULL), PC_E_UNTRUSTED_KEY);
    /* An unknown key cannot announce itself either. */
    assert_int_equal(accept(&t, &rogue, 2, &rogue.pub), PC_E_UNTRUSTED_KEY);
    assert_int_equal(t.n, 0);
    pc_trust_free(&t);
}

/* Rule 2: after a rotation at R, only the announced key signs seq > R;
 * the old key (a root here) is refused, the announced one before R too. */
static void test_rotation_switches_keys(void **state)
{
    (void)state;
    pc_trust t;
    pc_trust_init(&t, &roots);
    assert_int_equal(accept(&t, &root, 5, &k1.pub), PC_OK);
    assert_non_null(pc_trust_current(&t));
    assert_memory_equal(pc_trust_current(&t)->pk, k1.pub.pk, PC_PK_LEN);
    assert_int_equal(accept(&t, &k1, 6, NULL), PC_OK);
    assert_int_equal(accept(&t, &root, 6, NULL), PC_E_UNTRUSTED_KEY);
    assert_int_equal(accept(&t, &rogue, 6, NULL), PC_E_UNTRUSTED_KEY);
    /* Rule 5: an old entry is judged by the key of its own seq. */
    assert_int_equal(accept(&t, &root, 4, NULL), PC_OK);
    assert_int_equal(accept(&t, &k1, 4, NULL), PC_E_UNTRUSTED_KEY);
    assert_int_equal(accept(&t, &k1, 5, NULL), PC_E_UNTRUSTED_KEY);
    pc_trust_free(&t);
}

/* Rule 3: the current key rotates (planned); a revoked key cannot rotate;
 * a root key can rotate at any time (emergency); rogue keys never. */
static void test_who_may_rotate(void **state)
{
    (void)state;
    pc_trust t;
    pc_trust_init(&t, &roots);
    assert_int_equal(accept(&t, &root, 1, &k1.pub), PC_OK);
    assert_int_equal(accept(&t, &k1, 3, &k2.pub), PC_OK); /* planned */
    assert_int_equal(accept(&t, &k2, 4, NULL), PC_OK);
    /* k1 is revoked: it can neither sign nor rotate back to itself or on. */
    assert_int_equal(accept(&t, &k1, 5, NULL), PC_E_UNTRUSTED_KEY);
    assert_int_equal(accept(&t, &k1, 5, &rogue.pub), PC_E_UNTRUSTED_KEY);
    assert_int_equal(accept(&t, &rogue, 5, &rogue.pub), PC_E_UNTRUSTED_KEY);
    assert_int_equal(t.n, 2);
    /* k2 is compromised: the root moves the fleet to k1 again... */
    assert_int_equal(accept(&t, &root, 5, &k1.pub), PC_OK);
    assert_int_equal(accept(&t, &k2, 6, NULL), PC_E_UNTRUSTED_KEY);
    assert_int_equal(accept(&t, &k1, 6, NULL), PC_OK);
    /* ...but the root does not sign ordinary entries after a rotation. */
    assert_int_equal(accept(&t, &root, 6, NULL), PC_E_UNTRUSTED_KEY);
    pc_trust_free(&t);
}

/* Rule 3, offline path: a root's authorization lets the next key sign its
 * own rotation, only for the key it names and only replacing the key in
 * force at that seq, so it cannot be replayed or redirected. */
static void test_offline_authorization(void **state)
{
    (void)state;
    pc_trust t;
    pc_trust_init(&t, &roots);
    assert_int_equal(accept(&t, &root, 1, &k1.pub), PC_OK);
    /* Not from a root key: refused. */
    assert_int_equal(accept_authorized(&t, &k2, 2, &k2.pub, &rogue, &k2.pub, &k1.pub),
                     PC_E_UNTRUSTED_KEY);
    /* Authorizes k2 but the entry rotates to the rogue key. */
    assert_int_equal(accept_authorized(&t, &rogue, 2, &rogue.pub, &root, &k2.pub, &k1.pub),
                     PC_E_UNTRUSTED_KEY);
    /* Replaces another key than the current one (k1). */
    assert_int_equal(accept_authorized(&t, &k2, 2, &k2.pub, &root, &k2.pub, &k2.pub),
                     PC_E_UNTRUSTED_KEY);
    /* The authorized key must sign the rotation itself. */
    assert_int_equal(accept_authorized(&t, &rogue, 2, &k2.pub, &root, &k2.pub, &k1.pub),
                     PC_E_UNTRUSTED_KEY);
    assert_int_equal(t.n, 1);
    /* Right: k1 -> k2 by k2 with the root's permission. */
    assert_int_equal(accept_authorized(&t, &k2, 2, &k2.pub, &root, &k2.pub, &k1.pub), PC_OK);
    assert_memory_equal(pc_trust_current(&t)->pk, k2.pub.pk, PC_PK_LEN);
    /* The same permission replayed at a later seq is refused (k1 is no
     * longer the key it replaces; and k2 is already in force). */
    assert_int_not_equal(accept_authorized(&t, &k2, 3, &k2.pub, &root, &k2.pub, &k1.pub), PC_OK);
    /* Nor may the current key "rotate" to itself. */
    assert_int_equal(accept(&t, &k2, 3, &k2.pub), PC_E_INVALID);
    assert_int_equal(accept(&t, &k1, 3, NULL), PC_E_UNTRUSTED_KEY);
    assert_int_equal(accept(&t, &k2, 3, NULL), PC_OK);
    assert_int_equal(t.n, 2);
    pc_trust_free(&t);
    /* Before any rotation it replaces a root key. */
    pc_trust_init(&t, &roots);
    assert_int_equal(accept_authorized(&t, &k1, 1, &k1.pub, &root, &k1.pub, &k2.pub),
                     PC_E_UNTRUSTED_KEY);
    assert_int_equal(accept_authorized(&t, &k1, 1, &k1.pub, &root, &k1.pub, &root.pub), PC_OK);
    pc_trust_free(&t);
    /* Malformed text forms are refused, never crash. */
    Popcast__SignedRotationAuthorization *p = NULL;
    pc_err err;
    const char *bad[] = {"", "popcast-rotation-auth-v1 ", "popcast-rotation-auth-v1 !!!",
                         "popcast-rotation-auth-v1 AAAA trailing", "other-v1 AAAA"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(pc_authorization_parse(bad[i], &p, &err), PC_E_INVALID);
        assert_null(p);
    }
}

/* Rule 4: heartbeats are signed by the current key only. */
static void test_heartbeats(void **state)
{
    (void)state;
    pc_trust t;
    pc_trust_init(&t, &roots);
    Popcast__Heartbeat hb = POPCAST__HEARTBEAT__INIT;
    hb.head_seq = 9;
    Popcast__SignedHeartbeat by_root, by_k1;
    pc_err err;
    assert_int_equal(pc_envelope_sign_heartbeat(&root, &hb, &by_root, &err), PC_OK);
    assert_int_equal(pc_envelope_sign_heartbeat(&k1, &hb, &by_k1, &err), PC_OK);
    Popcast__Heartbeat *out = NULL;
    assert_int_equal(pc_trust_verify_heartbeat(&t, &by_root, &out, &err), PC_OK);
    popcast__heartbeat__free_unpacked(out, NULL);
    assert_int_equal(pc_trust_verify_heartbeat(&t, &by_k1, &out, &err), PC_E_UNTRUSTED_KEY);
    assert_int_equal(accept(&t, &root, 1, &k1.pub), PC_OK);
    assert_int_equal(pc_trust_verify_heartbeat(&t, &by_k1, &out, &err), PC_OK);
    popcast__heartbeat__free_unpacked(out, NULL);
    assert_int_equal(pc_trust_verify_heartbeat(&t, &by_root, &out, &err), PC_E_UNTRUSTED_KEY);
    Popcast__SignedHeartbeat *both[] = {&by_root, &by_k1};
    for (int i = 0; i < 2; i++) {
        free(both[i]->heartbeat.data);
        free(both[i]->signature.data);
        free(both[i]->key_id.data);
    }
    pc_trust_free(&t);
}

/* Rule 4 for snapshot assertions: signed by the key current as of the
 * chain given; the fields are checked; the digests pin the entries. */
static void test_snapshot_assertions(void **state)
{
    (void)state;
    signed_entry r1, d2, d3;
    make_rotation(&r1, &root, 1, &k1.pub);
    make_delete(&d2, &k1, 2);
    make_delete(&d3, &k1, 3);
    Popcast__Entry *rots[] = {&r1.e}, *tenants[] = {&d2.e, &d3.e}, *swapped[] = {&d3.e, &d2.e};
    uint8_t rot[PC_HASH_LEN], ten[PC_HASH_LEN], other[PC_HASH_LEN];
    pc_envelope_snapshot_digest(rots, 1, rot);
    pc_envelope_snapshot_digest(tenants, 2, ten);
    /* Order, content and count all change the digest. */
    pc_envelope_snapshot_digest(swapped, 2, other);
    assert_memory_not_equal(ten, other, PC_HASH_LEN);
    pc_envelope_snapshot_digest(tenants, 1, other);
    assert_memory_not_equal(ten, other, PC_HASH_LEN);
    pc_envelope_snapshot_digest(NULL, 0, other);
    assert_memory_not_equal(rot, other, PC_HASH_LEN);

    Popcast__SnapshotAssertion a = POPCAST__SNAPSHOT_ASSERTION__INIT;
    a.seq = 3;
    a.head_seq = 5;
    a.rotations_digest = (ProtobufCBinaryData){PC_HASH_LEN, rot};
    a.tenants_digest = (ProtobufCBinaryData){PC_HASH_LEN, ten};
    a.time_unix_ms = 1;
    Popcast__SignedSnapshotAssertion by_root, by_k1, by_rogue, bad_head;
    pc_err err;
    assert_int_equal(pc_envelope_sign_snapshot(&root, &a, &by_root, &err), PC_OK);
    assert_int_equal(pc_envelope_sign_snapshot(&k1, &a, &by_k1, &err), PC_OK);
    assert_int_equal(pc_envelope_sign_snapshot(&rogue, &a, &by_rogue, &err), PC_OK);
    a.head_seq = 2; /* below its own seq */
    assert_int_equal(pc_envelope_sign_snapshot(&k1, &a, &bad_head, &err), PC_OK);

    pc_trust t;
    pc_trust_init(&t, &roots);
    Popcast__SnapshotAssertion *out = NULL;
    /* With no rotation carried, a root signs; not k1, not a stranger. */
    assert_int_equal(pc_trust_verify_snapshot(&t, &by_root, &out, &err), PC_OK);
    assert_int_equal(out->seq, 3);
    assert_int_equal(out->head_seq, 5);
    popcast__snapshot_assertion__free_unpacked(out, NULL);
    assert_int_equal(pc_trust_verify_snapshot(&t, &by_k1, &out, &err), PC_E_UNTRUSTED_KEY);
    assert_null(out);
    /* With the rotation to k1 carried, only k1: the root is revoked. */
    assert_int_equal(accept(&t, &root, 1, &k1.pub), PC_OK);
    assert_int_equal(pc_trust_verify_snapshot(&t, &by_k1, &out, &err), PC_OK);
    popcast__snapshot_assertion__free_unpacked(out, NULL);
    assert_int_equal(pc_trust_verify_snapshot(&t, &by_root, &out, &err), PC_E_UNTRUSTED_KEY);
    assert_int_equal(pc_trust_verify_snapshot(&t, &by_rogue, &out, &err), PC_E_UNTRUSTED_KEY);
    /* The seq cannot be changed under the signature, nor the hint. */
    by_k1.assertion.data[1] ^= 1;
    assert_int_equal(pc_trust_verify_snapshot(&t, &by_k1, &out, &err), PC_E_BAD_SIGNATURE);
    by_k1.assertion.data[1] ^= 1;
    /* Malformed fields, or none at all. */
    assert_int_equal(pc_trust_verify_snapshot(&t, &bad_head, &out, &err), PC_E_INVALID);
    assert_int_equal(pc_trust_verify_snapshot(&t, NULL, &out, &err), PC_E_INVALID);
    Popcast__SignedSnapshotAssertion *all[] = {&by_root, &by_k1, &by_rogue, &bad_head};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        free(all[i]->assertion.data);
        free(all[i]->signature.data);
        free(all[i]->key_id.data);
    }
    pc_envelope_signed_clear(&r1.sm);
    pc_envelope_signed_clear(&d2.sm);
    pc_envelope_signed_clear(&d3.sm);
    pc_trust_free(&t);
}

/* Rotations must advance; a chain rebuilt from stored manifests equals the
 * live one; extends() tells a continuation from a fork. */
static void test_advance_and_extends(void **state)
{
    (void)state;
    pc_trust a, b, fork;
    pc_trust_init(&a, &roots);
    pc_trust_init(&b, &roots);
    pc_trust_init(&fork, &roots);
    signed_entry r1, r2;
    make_rotation(&r1, &root, 3, &k1.pub);
    make_rotation(&r2, &k1, 7, &k2.pub);
    pc_err err;
    assert_int_equal(pc_trust_advance_signed(&a, &r1.sm, NULL, &err), PC_OK);
    /* The same seq again, or an older one, is refused. */
    assert_int_equal(pc_trust_advance_signed(&a, &r1.sm, NULL, &err), PC_E_INVALID);
    assert_int_equal(pc_trust_extends(&a, &b), 0);
    assert_int_equal(pc_trust_advance_signed(&b, &r1.sm, NULL, &err), PC_OK);
    assert_int_equal(pc_trust_advance_signed(&b, &r2.sm, NULL, &err), PC_OK);
    assert_int_equal(pc_trust_extends(&a, &b), 1);
    assert_int_equal(pc_trust_extends(&b, &a), 0);
    /* Same seq, another key: a fork. */
    signed_entry other;
    make_rotation(&other, &root, 3, &rogue.pub);
    assert_int_equal(pc_trust_advance_signed(&fork, &other.sm, NULL, &err), PC_OK);
    assert_int_equal(pc_trust_extends(&a, &fork), 0);
    /* A copy is independent of its source. */
    pc_trust copy;
    pc_trust_init(&copy, NULL);
    assert_int_equal(pc_trust_copy(&copy, &b, &err), PC_OK);
    pc_trust_free(&b);
    assert_int_equal(copy.n, 2);
    assert_memory_equal(pc_trust_current(&copy)->pk, k2.pub.pk, PC_PK_LEN);
    /* A rotation without a 32-byte key never verifies. */
    Popcast__Manifest m = POPCAST__MANIFEST__INIT;
    m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION;
    m.seq = 9;
    uint8_t short_key[16] = {0};
    m.next_public_key.data = short_key;
    m.next_public_key.len = sizeof(short_key);
    signed_entry bad;
    assert_int_equal(pc_envelope_sign_manifest(&k2, &m, &bad.sm, &err), PC_OK);
    popcast__entry__init(&bad.e);
    bad.e.signed_ = &bad.sm;
    Popcast__Manifest *out = NULL;
    assert_int_equal(verify(&copy, &bad, &out), PC_E_INVALID);
    signed_entry *all[] = {&r1, &r2, &other, &bad};
    for (size_t i = 0; i < 4; i++)
        pc_envelope_signed_clear(&all[i]->sm);
    pc_trust_free(&a);
    pc_trust_free(&fork);
    pc_trust_free(&copy);
}

/* Rebuilding the chain from stored rotations verifies each one again
 * (trust.h): a flipped bit, an unknown signer, a revoked signer, or an
 * entry that is not a rotation is refused with the verification's code,
 * naming the seq, and the chain stays as it was. */
static void test_advance_signed_verifies(void **state)
{
    (void)state;
    pc_trust t;
    pc_trust_init(&t, &roots);
    signed_entry r1, r2, flipped, unknown, revoked, del;
    make_rotation(&r1, &root, 3, &k1.pub);
    make_rotation(&r2, &k1, 7, &k2.pub);
    make_rotation(&flipped, &k2, 9, &k1.pub);
    flipped.sm.signature.data[0] ^= 0x80;
    make_rotation(&unknown, &rogue, 9, &k1.pub);
    make_rotation(&revoked, &k1, 9, &k1.pub); /* k1 is revoked since seq 7 */
    make_delete(&del, &k2, 9);
    pc_err err;
    Popcast__Manifest *m = NULL;
    assert_int_equal(pc_trust_advance_signed(&t, &r1.sm, &m, &err), PC_OK);
    assert_non_null(m);
    assert_int_equal(m->seq, 3);
    popcast__manifest__free_unpacked(m, NULL);
    assert_int_equal(pc_trust_advance_signed(&t, &r2.sm, NULL, &err), PC_OK);
    struct {
        signed_entry *se;
        int code;
    } bad[] = {{&flipped, PC_E_BAD_SIGNATURE},
               {&unknown, PC_E_UNTRUSTED_KEY},
               {&revoked, PC_E_UNTRUSTED_KEY},
               {&del, PC_E_INVALID}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        Popcast__Manifest sentinel = POPCAST__MANIFEST__INIT;
        m = &sentinel; /* must be reset to NULL */
        assert_int_equal(pc_trust_advance_signed(&t, &bad[i].se->sm, &m, &err), bad[i].code);
        assert_null(m);
        if (strstr(err.msg, "key rotation at seq 9") == NULL)
            fail_msg("case %zu: the seq is not named: %s", i, err.msg);
        assert_int_equal(t.n, 2);
        assert_memory_equal(pc_trust_current(&t)->pk, k2.pub.pk, PC_PK_LEN);
    }
    /* A chain that starts from another root than the trusted ones (the
     * trusted keys changed) does not rebuild. */
    pc_keyring other = {.count = 0};
    assert_int_equal(pc_keyring_add(&other, &rogue.pub, &err), PC_OK);
    pc_trust t2;
    pc_trust_init(&t2, &other);
    assert_int_equal(pc_trust_advance_signed(&t2, &r1.sm, NULL, &err), PC_E_UNTRUSTED_KEY);
    assert_int_equal(t2.n, 0);
    signed_entry *all[] = {&r1, &r2, &flipped, &unknown, &revoked, &del};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        pc_envelope_signed_clear(&all[i]->sm);
    pc_trust_free(&t);
    pc_trust_free(&t2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roots_before_rotation),
        cmocka_unit_test(test_rotation_switches_keys),
        cmocka_unit_test(test_who_may_rotate),
        cmocka_unit_test(test_offline_authorization),
        cmocka_unit_test(test_heartbeats),
        cmocka_unit_test(test_snapshot_assertions),
        cmocka_unit_test(test_advance_and_extends),
        cmocka_unit_test(test_advance_signed_verifies),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
