/* test_crypto.c - signatures, hashes, key files and the envelope: nothing
 * unsigned, mis-signed or tampered verifies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "bundle.h"
#include "crypto.h"
#include "envelope.h"
#include "harness.h"

typedef struct fixture {
    pc_signing_key key, other;
    pc_keyring ring;
    uint8_t *bundle;
    size_t bundle_len;
    Popcast__Manifest m;
    uint8_t hash[PC_HASH_LEN];
    Popcast__SignedManifest sm;
} fixture;

static int setup(void **state)
{
    pc_test_init();
    fixture *f = calloc(1, sizeof(*f));
    assert_int_equal(pc_keygen(&f->key), PC_OK);
    assert_int_equal(pc_keygen(&f->other), PC_OK);
    assert_int_equal(pc_keyring_add(&f->ring, &f->key.pub, NULL), PC_OK);
    const char *src = "return function() return 'x' end";
    pc_err err;
    assert_int_equal(pc_bundle_pack_single("main.lua", (const uint8_t *)src, strlen(src),
                                           &f->bundle, &f->bundle_len, &err),
                     PC_OK);
    pc_hash(f->hash, f->bundle, f->bundle_len);
    popcast__manifest__init(&f->m);
    f->m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY;
    f->m.tenant = "acme";
    f->m.version = 1;
    f->m.seq = 1;
    f->m.bundle_hash.data = f->hash;
    f->m.bundle_hash.len = PC_HASH_LEN;
    f->m.bundle_size = f->bundle_len;
    f->m.entrypoint = "main.lua";
    f->m.runtime = "lua";
    assert_int_equal(pc_envelope_sign_manifest(&f->key, &f->m, &f->sm, &err), PC_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    pc_envelope_signed_clear(&f->sm);
    free(f->bundle);
    free(f);
    return 0;
}

static int verify(fixture *f, const uint8_t *bundle, size_t len)
{
    Popcast__Entry e = POPCAST__ENTRY__INIT;
    e.signed_ = &f->sm;
    e.bundle.data = (uint8_t *)bundle;
    e.bundle.len = len;
    Popcast__Manifest *out = NULL;
    pc_err err;
    int rc = pc_envelope_verify_entry(&f->ring, &e, 1 << 20, &out, &err);
    if (out != NULL) {
        assert_int_equal(rc, PC_OK);
        popcast__manifest__free_unpacked(out, NULL);
    }
    return rc;
}

static void test_round_trip(void **state)
{
    fixture *f = *state;
    assert_int_equal(verify(f, f->bundle, f->bundle_len), PC_OK);
}

static void test_every_flipped_manifest_bit_is_refused(void **state)
{
    fixture *f = *state;
    for (size_t i = 0; i < f->sm.manifest.len * 8; i++) {
        f->sm.manifest.data[i / 8] ^= (uint8_t)(1u << (i % 8));
        int rc = verify(f, f->bundle, f->bundle_len);
        f->sm.manifest.data[i / 8] ^= (uint8_t)(1u << (i % 8));
        assert_int_equal(rc, PC_E_BAD_SIGNATURE);
    }
}

static void test_every_flipped_signature_bit_is_refused(void **state)
{
    fixture *f = *state;
    for (size_t i = 0; i < PC_SIG_LEN * 8; i++) {
        f->sm.signature.data[i / 8] ^= (uint8_t)(1u << (i % 8));
        int rc = verify(f, f->bundle, f->bundle_len);
        f->sm.signature.data[i / 8] ^= (uint8_t)(1u << (i % 8));
        assert_int_equal(rc, PC_E_BAD_SIGNATURE);
    }
}

static void test_flipped_bundle_bits_are_refused(void **state)
{
    fixture *f = *state;
    uint8_t *copy = malloc(f->bundle_len);
    for (size_t i = 0; i < f->bundle_len * 8; i += 7) {
        memcpy(copy, f->bundle, f->bundle_len);
        copy[i / 8] ^= (uint8_t)(1u << (i % 8));
        assert_int_equal(verify(f, copy, f->bundle_len), PC_E_HASH_MISMATCH);
    }
    /* Truncated and extended bundles too. */
    assert_int_equal(verify(f, f->bundle, f->bundle_len - 1), PC_E_HASH_MISMATCH);
    free(copy);
}

static void test_untrusted_key_is_refused(void **state)
{
    fixture *f = *state;
    Popcast__SignedManifest sm;
    pc_err err;
    assert_int_equal(pc_envelope_sign_manifest(&f->other, &f->m, &sm, &err), PC_OK);
    Popcast__Entry e = POPCAST__ENTRY__INIT;
    e.signed_ = &sm;
    e.bundle.data = f->bundle;
    e.bundle.len = f->bundle_len;
    Popcast__Manifest *out = NULL;
    assert_int_equal(pc_envelope_verify_entry(&f->ring, &e, 1 << 20, &out, &err),
                     PC_E_UNTRUSTED_KEY);
    assert_null(out);
    /* Claiming the trusted key's id does not help: the signature fails. */
    memcpy(sm.key_id.data, f->key.pub.id, PC_KEY_ID_LEN);
    assert_int_equal(pc_envelope_verify_entry(&f->ring, &e, 1 << 20, &out, &err),
                     PC_E_BAD_SIGNATURE);
    pc_envelope_signed_clear(&sm);
}

static void test_missing_parts_are_refused(void **state)
{
    fixture *f = *state;
    Popcast__Entry e = POPCAST__ENTRY__INIT;
    Popcast__Manifest *out = NULL;
    pc_err err;
    assert_int_equal(pc_envelope_verify_entry(&f->ring, &e, 1 << 20, &out, &err), PC_E_INVALID);
    Popcast__SignedManifest empty = POPCAST__SIGNED_MANIFEST__INIT;
    e.signed_ = &empty;
    assert_int_equal(pc_envelope_verify_entry(&f->ring, &e, 1 << 20, &out, &err), PC_E_INVALID);
    /* A valid signature without a signature field at all. */
    Popcast__SignedManifest nosig = f->sm;
    nosig.signature.len = 0;
    e.signed_ = &nosig;
    assert_int_equal(pc_envelope_verify_entry(&f->ring, &e, 1 << 20, &out, &err),
                     PC_E_BAD_SIGNATURE);
}

static void test_oversized_bundle_is_refused(void **state)
{
    fixture *f = *state;
    Popcast__Entry e = POPCAST__ENTRY__INIT;
    e.signed_ = &f->sm;
    e.bundle.data = f->bundle;
    e.bundle.len = f->bundle_len;
    Popcast__Manifest *out = NULL;
    assert_int_equal(pc_envelope_verify_entry(&f->ring, &e, f->bundle_len - 1, &out, NULL),
                     PC_E_TOO_LARGE);
}

static void test_signature_domains_are_separate(void **state)
{
    fixture *f = *state;
    /* A manifest signature presented as a heartbeat signature fails. */
    Popcast__SignedHeartbeat sh = POPCAST__SIGNED_HEARTBEAT__INIT;
    sh.heartbeat = f->sm.manifest;
    sh.signature = f->sm.signature;
    sh.key_id = f->sm.key_id;
    Popcast__Heartbeat *hb = NULL;
    assert_int_equal(pc_envelope_verify_heartbeat(&f->ring, &sh, &hb, NULL), PC_E_BAD_SIGNATURE);
    uint8_t sig[PC_SIG_LEN];
    pc_sign(&f->key, PC_DOMAIN_HEARTBEAT, (const uint8_t *)"abc", 3, sig);
    assert_int_equal(
        pc_verify(&f->key.pub, PC_DOMAIN_HEARTBEAT, (const uint8_t *)"abc", 3, sig, PC_SIG_LEN),
        PC_OK);
    assert_int_equal(
        pc_verify(&f->key.pub, PC_DOMAIN_MANIFEST, (const uint8_t *)"abc", 3, sig, PC_SIG_LEN),
        PC_E_BAD_SIGNATURE);
}

static void test_manifest_fields_are_checked(void **state)
{
    fixture *f = *state;
    const char *bad_tenants[] = {
        "",   "ACME", "a/b",
        "..", "x_y",  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
    for (size_t i = 0; i < sizeof(bad_tenants) / sizeof(bad_tenants[0]); i++) {
        Popcast__Manifest m = f->m;
        m.tenant = (char *)bad_tenants[i];
        Popcast__SignedManifest sm;
        assert_int_equal(pc_envelope_sign_manifest(&f->key, &m, &sm, NULL), PC_OK);
        Popcast__Manifest *out = NULL;
        assert_int_equal(pc_envelope_verify_manifest(&f->ring, &sm, &out, NULL), PC_E_INVALID);
        pc_envelope_signed_clear(&sm);
    }
    Popcast__Manifest m = f->m;
    m.version = 0;
    Popcast__SignedManifest sm;
    assert_int_equal(pc_envelope_sign_manifest(&f->key, &m, &sm, NULL), PC_OK);
    Popcast__Manifest *out = NULL;
    assert_int_equal(pc_envelope_verify_manifest(&f->ring, &sm, &out, NULL), PC_E_INVALID);
    pc_envelope_signed_clear(&sm);
}

static void test_key_files(void **state)
{
    fixture *f = *state;
    char dir[256], sk[300], pk[300];
    pc_test_tmpdir(dir, sizeof(dir), "keys");
    snprintf(sk, sizeof(sk), "%s/k.key", dir);
    snprintf(pk, sizeof(pk), "%s/k.pub", dir);
    pc_err err;
    assert_int_equal(pc_key_write_secret(sk, &f->key, &err), PC_OK);
    assert_int_equal(pc_key_write_public(pk, &f->key.pub, &err), PC_OK);
    struct stat st;
    assert_int_equal(stat(sk, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* Never overwrites. */
    assert_int_equal(pc_key_write_secret(sk, &f->other, &err), PC_E_EXISTS);
    pc_signing_key back;
    pc_public_key pub;
    assert_int_equal(pc_key_read_secret(sk, &back, &err), PC_OK);
    assert_memory_equal(back.sk, f->key.sk, PC_SK_LEN);
    assert_memory_equal(back.pub.id, f->key.pub.id, PC_KEY_ID_LEN);
    assert_int_equal(pc_key_read_public(pk, &pub, &err), PC_OK);
    assert_memory_equal(pub.pk, f->key.pub.pk, PC_PK_LEN);
    /* A secret other users can read is refused. */
    chmod(sk, 0644);
    assert_int_equal(pc_key_read_secret(sk, &back, &err), PC_E_INVALID);
    assert_non_null(strstr(err.msg, "chmod 600"));
    /* A public key is not a secret key, and garbage is neither. */
    assert_int_equal(pc_key_read_secret(pk, &back, &err), PC_E_INVALID);
    const char *garbage[] = {"", "popcast-ed25519-public-v1 ", "popcast-ed25519-public-v1 !!!!",
                             "popcast-ed25519-public-v1 AAAA", "hello\n"};
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
        pc_test_write_file(pk, garbage[i], strlen(garbage[i]));
        assert_int_equal(pc_key_read_public(pk, &pub, &err), PC_E_INVALID);
    }
    assert_int_equal(pc_key_read_public("/nonexistent/k.pub", &pub, &err), PC_E_NOTFOUND);
    pc_test_rm_rf(dir);
}

static void test_hex(void **state)
{
    uint8_t in[4] = {0xde, 0xad, 0xbe, 0xef}, out[4];
    char hex[9];
    pc_hex(hex, in, 4);
    assert_string_equal(hex, "deadbeef");
    assert_int_equal(pc_unhex(out, 4, hex), PC_OK);
    assert_memory_equal(in, out, 4);
    assert_int_equal(pc_unhex(out, 4, "deadbee"), PC_E_INVALID);
    assert_int_equal(pc_unhex(out, 4, "deadbeefaa"), PC_E_INVALID);
    assert_int_equal(pc_unhex(out, 4, "deadbeeg"), PC_E_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_flipped_manifest_bit_is_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_every_flipped_signature_bit_is_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_flipped_bundle_bits_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_untrusted_key_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_parts_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversized_bundle_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signature_domains_are_separate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifest_fields_are_checked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_files, setup, teardown),
        cmocka_unit_test(test_hex),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
