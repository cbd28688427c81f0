/* test_relay_log.c - the relay log's invariants (relay/relay_log.h):
 * contiguous, appended only at head + 1, stored byte for byte, bounded by
 * entries and by bytes with the newest always kept, rotations kept past
 * trimming and restarts, and a reset that restarts it after a snapshot. */
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
#include "relay_log.h"

static pc_signing_key key;

typedef struct item {
    Popcast__Entry e;
    Popcast__SignedManifest sm;
    Popcast__Manifest m;
    uint8_t hash[PC_HASH_LEN];
    uint8_t bundle[512];
    uint8_t next_pk[PC_PK_LEN];
} item;

/* A deploy of size bytes (0: a key rotation) at seq. */
static void item_make(item *it, uint64_t seq, size_t size)
{
    memset(it, 0, sizeof(*it));
    popcast__entry__init(&it->e);
    popcast__manifest__init(&it->m);
    it->m.seq = seq;
    it->m.tenant = "app";
    it->m.version = seq;
    if (size > 0) {
        for (size_t i = 0; i < size; i++)
            it->bundle[i] = (uint8_t)(seq * 13 + i);
        pc_hash(it->hash, it->bundle, size);
        it->m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY;
        it->m.runtime = "lua";
        it->m.entrypoint = "main.lua";
        it->m.bundle_hash.data = it->hash;
        it->m.bundle_hash.len = PC_HASH_LEN;
        it->m.bundle_size = size;
        it->e.bundle.data = it->bundle;
        it->e.bundle.len = size;
    } else {
        it->m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION;
        it->m.tenant = "";
        memset(it->next_pk, (int)seq, sizeof(it->next_pk));
        it->m.next_public_key.data = it->next_pk;
        it->m.next_public_key.len = PC_PK_LEN;
    }
    assert_int_equal(pc_envelope_sign_manifest(&key, &it->m, &it->sm, NULL), PC_OK);
    it->e.signed_ = &it->sm;
}

static void item_free(item *it)
{
    pc_envelope_signed_clear(&it->sm);
}

static pc_relay_log *open_log(const char *dir, uint64_t entries, uint64_t bytes)
{
    pc_relay_log_options o = {
        .retain_entries = entries, .retain_bytes = bytes, .map_size = 64 << 20};
    pc_relay_log *l = NULL;
    pc_err err;
    if (pc_relay_log_open(&l, dir, &o, &err) != PC_OK)
        fail_msg("open %s: %s", dir, err.msg);
    return l;
}

static int append(pc_relay_log *l, uint64_t seq, size_t size)
{
    item it;
    item_make(&it, seq, size);
    pc_err err;
    int rc = pc_relay_log_append(l, &it.e, &it.m, &err);
    item_free(&it);
    return rc;
}

static void bounds_are(pc_relay_log *l, uint64_t first, uint64_t head)
{
    uint64_t f, h;
    pc_relay_log_bounds(l, &f, &h);
    assert_int_equal(f, first);
    assert_int_equal(h, head);
}

static int setup(void **state)
{
    (void)state;
    pc_test_init();
    return pc_keygen(&key);
}

/* Appends only at head + 1; what comes back is what went in. */
static void test_contiguous_and_exact(void **state)
{
    (void)state;
    char dir[256];
    pc_test_tmpdir(dir, sizeof(dir), "relaylog");
    pc_relay_log *l = open_log(dir, 100, 1 << 20);
    bounds_are(l, 1, 0);
    assert_int_equal(append(l, 2, 10), PC_E_SEQ_GAP);
    assert_int_equal(append(l, 1, 10), PC_OK);
    assert_int_equal(append(l, 1, 10), PC_E_DUPLICATE);
    assert_int_equal(append(l, 3, 10), PC_E_SEQ_GAP);
    assert_int_equal(append(l, 2, 100), PC_OK);
    bounds_are(l, 1, 2);
    /* An entry whose bundle is missing is not stored. */
    item it;
    item_make(&it, 3, 50);
    it.e.bundle.len = 0;
    it.e.bundle_omitted = 1;
    pc_err err;
    assert_int_equal(pc_relay_log_append(l, &it.e, &it.m, &err), PC_E_INVALID);
    bounds_are(l, 1, 2);
    item_free(&it);

    item want;
    item_make(&want, 2, 100);
    Popcast__Entry *got = NULL;
    assert_int_equal(pc_relay_log_get(l, 2, &got, &err), PC_OK);
    assert_memory_equal(got->signed_->manifest.data, want.sm.manifest.data, want.sm.manifest.len);
    assert_memory_equal(got->signed_->signature.data, want.sm.signature.data,
                        want.sm.signature.len);
    assert_int_equal(got->bundle.len, 100);
    assert_memory_equal(got->bundle.data, want.bundle, 100);
    popcast__entry__free_unpacked(got, NULL);
    /* The bundle by hash, in slices. */
    uint8_t *data = NULL;
    size_t n = 0;
    uint64_t total = 0;
    assert_int_equal(pc_relay_log_read_blob(l, want.hash, 60, 1000, &data, &n, &total, &err),
                     PC_OK);
    assert_int_equal(total, 100);
    assert_int_equal(n, 40);
    assert_memory_equal(data, want.bundle + 60, 40);
    free(data);
    assert_int_equal(pc_relay_log_read_blob(l, want.hash, 100, 10, &data, &n, &total, &err),
                     PC_E_INVALID);
    item_free(&want);
    assert_int_equal(pc_relay_log_get(l, 3, &got, &err), PC_E_NOTFOUND);
    pc_relay_log_close(l);
    pc_test_rm_rf(dir);
}

static int collect(void *arg, const Popcast__SignedManifest *sm)
{
    uint64_t *seqs = arg;
    Popcast__Manifest *m = popcast__manifest__unpack(NULL, sm->manifest.len, sm->manifest.data);
    assert_non_null(m);
    seqs[++seqs[0]] = m->seq;
    popcast__manifest__free_unpacked(m, NULL);
    return 0;
}

/* Bounded by entries and by bytes; the newest stays whatever its size;
 * trimmed bundles are gone; rotations stay, across a reopen. */
static void test_retention(void **state)
{
    (void)state;
    char dir[256];
    pc_test_tmpdir(dir, sizeof(dir), "relaylog");
    pc_relay_log *l = open_log(dir, 5, 1 << 20);
    assert_int_equal(append(l, 1, 0), PC_OK); /* a rotation */
    for (uint64_t s = 2; s <= 12; s++)
        assert_int_equal(append(l, s, 100), PC_OK);
    bounds_are(l, 8, 12);
    item old;
    item_make(&old, 3, 100);
    uint8_t *data = NULL;
    size_t n = 0;
    uint64_t total = 0;
    pc_err err;
    assert_int_equal(pc_relay_log_read_blob(l, old.hash, 0, 10, &data, &n, &total, &err),
                     PC_E_NOTFOUND);
    item_free(&old);
    uint64_t seqs[8] = {0};
    pc_relay_log_close(l);

    /* By bytes: an entry of 500 bundle bytes is about 750 bytes in all;
     * two fit in 1700, three do not. */
    l = open_log(dir, 1000, 1700);
    assert_int_equal(append(l, 13, 500), PC_OK);
    assert_int_equal(append(l, 14, 500), PC_OK);
    assert_int_equal(append(l, 15, 500), PC_OK);
    bounds_are(l, 14, 15);
    pc_relay_log_close(l);
    /* Over the byte bound alone: still kept. */
    l = open_log(dir, 1000, 100);
    assert_int_equal(append(l, 16, 500), PC_OK);
    bounds_are(l, 16, 16);
    assert_int_equal(pc_relay_log_foreach_rotation(l, collect, seqs, &err), PC_OK);
    assert_int_equal(seqs[0], 1);
    assert_int_equal(seqs[1], 1);
    pc_relay_log_close(l);
    pc_test_rm_rf(dir);
}

/* A reset empties the log, keeps only the snapshot's rotations and
 * restarts it after the snapshot's seq. */
static void test_reset(void **state)
{
    (void)state;
    char dir[256];
    pc_test_tmpdir(dir, sizeof(dir), "relaylog");
    pc_relay_log *l = open_log(dir, 100, 1 << 20);
    assert_int_equal(append(l, 1, 0), PC_OK);
    for (uint64_t s = 2; s <= 4; s++)
        assert_int_equal(append(l, s, 50), PC_OK);
    item rot;
    item_make(&rot, 30, 0);
    Popcast__Entry *rots[] = {&rot.e};
    uint64_t rot_seqs[] = {30};
    pc_err err;
    assert_int_equal(pc_relay_log_reset(l, 40, rots, 1, rot_seqs, &err), PC_OK);
    bounds_are(l, 41, 40);
    Popcast__Entry *got = NULL;
    assert_int_equal(pc_relay_log_get(l, 3, &got, &err), PC_E_NOTFOUND);
    assert_int_equal(append(l, 40, 50), PC_E_DUPLICATE);
    assert_int_equal(append(l, 41, 50), PC_OK);
    uint64_t seqs[8] = {0};
    assert_int_equal(pc_relay_log_foreach_rotation(l, collect, seqs, &err), PC_OK);
    assert_int_equal(seqs[0], 1);
    assert_int_equal(seqs[1], 30);
    item_free(&rot);
    pc_relay_log_close(l);
    pc_test_rm_rf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_contiguous_and_exact),
        cmocka_unit_test(test_retention),
        cmocka_unit_test(test_reset),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
