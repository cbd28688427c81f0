/* test_store.c - the LMDB store's invariants (store/store.h): one write
 * transaction per change, seq order exactly once, versions only grow,
 * reference-counted blobs, map-full as an error, one process per data
 * directory, and crash consistency under kill -9 of a writer. */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "envelope.h"
#include "harness.h"
#include "store.h"

static pc_signing_key key;

/* One signed entry with its bundle. */
typedef struct entry {
    Popcast__SignedManifest sm;
    Popcast__Manifest m;
    uint8_t hash[PC_HASH_LEN];
    uint8_t *bundle;
    size_t len;
    char tenant[PC_TENANT_MAX + 1];
} entry;

/* Builds a deploy (bundle_size > 0), or a delete (bundle_size == 0). The
 * bundle's bytes are derived from fill so that different fills give
 * different blobs. */
static int entry_make(entry *e, const char *tenant, uint64_t seq, uint64_t version,
                      size_t bundle_size, int fill)
{
    memset(e, 0, sizeof(*e));
    snprintf(e->tenant, sizeof(e->tenant), "%s", tenant);
    popcast__manifest__init(&e->m);
    e->m.tenant = e->tenant;
    e->m.version = version;
    e->m.seq = seq;
    e->m.runtime = "lua";
    if (bundle_size > 0) {
        e->bundle = malloc(bundle_size);
        if (e->bundle == NULL)
            return -1;
        for (size_t i = 0; i < bundle_size; i++)
            e->bundle[i] = (uint8_t)(fill * 31 + i * 7);
        e->len = bundle_size;
        pc_hash(e->hash, e->bundle, e->len);
        e->m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY;
        e->m.bundle_hash.data = e->hash;
        e->m.bundle_hash.len = PC_HASH_LEN;
        e->m.bundle_size = e->len;
        e->m.entrypoint = "main.lua";
    } else {
        e->m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE;
    }
    return pc_envelope_sign_manifest(&key, &e->m, &e->sm, NULL);
}

static void entry_free(entry *e)
{
    pc_envelope_signed_clear(&e->sm);
    free(e->bundle);
}

static int entry_apply(pc_store *s, entry *e, pc_err *err)
{
    return pc_store_apply(s, &e->sm, &e->m, e->bundle, e->len, err);
}

/* Set by the tests that run again with MDB_WRITEMAP (the agent's mode). */
static bool write_map;

static pc_store *open_store(const char *dir, bool keep_history, uint64_t map, uint64_t map_max)
{
    pc_store_options opt = {.map_size = map,
                            .map_size_max = map_max,
                            .keep_history = keep_history,
                            .write_map = write_map};
    pc_store *s = NULL;
    pc_err err;
    if (pc_store_open(&s, dir, &opt, &err) != PC_OK)
        fail_msg("open %s: %s", dir, err.msg);
    return s;
}

static uint64_t applied(pc_store *s)
{
    uint64_t seq = 0;
    pc_err err;
    assert_int_equal(pc_store_applied_seq(s, &seq, &err), PC_OK);
    return seq;
}

static void apply_ok(pc_store *s, const char *tenant, uint64_t seq, uint64_t version, size_t size,
                     int fill)
{
    entry e;
    pc_err err;
    assert_int_equal(entry_make(&e, tenant, seq, version, size, fill), PC_OK);
    if (entry_apply(s, &e, &err) != PC_OK)
        fail_msg("apply %s seq %llu: %s", tenant, (unsigned long long)seq, err.msg);
    entry_free(&e);
}

static int setup(void **state)
{
    pc_test_init();
    return pc_keygen(&key);
}

static void test_apply_stores_everything_together(void **state)
{
    char dir[256];
    pc_test_tmpdir(dir, sizeof(dir), "store");
    pc_store *s = open_store(dir, true, 0, 0);
    assert_int_equal(applied(s), 0);

    entry e;
    pc_err err;
    assert_int_equal(entry_make(&e, "acme", 1, 1, 1000, 1), PC_OK);
    assert_int_equal(entry_apply(s, &e, &err), PC_OK);
    assert_int_equal(applied(s), 1);

    pc_tenant_state t;
    assert_int_equal(pc_store_get_tenant(s, "acme", &t, &err), PC_OK);
    assert_int_equal(t.active_version, 1);
    assert_int_equal(t.active_seq, 1);
    assert_int_equal(t.last_version, 1);
    assert_memory_equal(t.active_hash, e.hash, PC_HASH_LEN);

    uint64_t seq = 0;
    assert_int_equal(pc_store_version_seq(s, "acme", 1, &seq, &err), PC_OK);
    assert_int_equal(seq, 1);

    /* The log holds the exact signed bytes. */
    Popcast__LogRecord *rec = NULL;
    assert_int_equal(pc_store_get_log(s, 1, &rec, &err), PC_OK);
    assert_non_null(rec->signed_);
    assert_int_equal(rec->signed_->manifest.len, e.sm.manifest.len);
    assert_memory_equal(rec->signed_->manifest.data, e.sm.manifest.data, e.sm.manifest.len);
    popcast__log_record__free_unpacked(rec, NULL);

    uint8_t *blob = NULL;
    size_t blen = 0;
    assert_int_equal(pc_store_get_blob(s, e.hash, &blob, &blen, &err), PC_OK);
    assert_int_equal(blen, e.len);
    assert_memory_equal(blob, e.bundle, blen);
    free(blob);

    /* Chunked reads of the same blob. */
    uint8_t part[100];
    size_t got = 0;
    uint64_t total = 0;
    assert_int_equal(pc_store_read_blob(s, e.hash, 950, part, sizeof(part), &got, &total, &err),
                     PC_OK);
    assert_int_equal(got, 50);
    assert_int_equal(total, 1000);
    assert_memory_equal(part, e.bundle + 950, 50);
    assert_int_equal(pc_store_read_blob(s, e.hash, 1001, part, sizeof(part), &got, &total, &err),
                     PC_E_INVALID);
    entry_free(&e);

    /* Everything survives a close and reopen. */
    pc_store_close(s);
    s = open_store(dir, true, 0, 0);
    assert_int_equal(applied(s), 1);
    assert_int_equal(pc_store_get_tenant(s, "acme", &t, &err), PC_OK);
    assert_int_equal(t.active_version, 1);
    pc_store_close(s);
    pc_test_rm_rf(dir);
}

/* Asserts that the store still shows exactly the state after seq 2. */
static void expect_unchanged(pc_store *s)
{
    pc_err err;
    assert_int_equal(applied(s), 2);
    pc_tenant_state t;
    assert_int_equal(pc_store_get_tenant(s, "acme", &t, &err), PC_OK);
    assert_int_equal(t.active_version, 2);
    assert_int_equal(t.last_version, 2);
    assert_int_equal(pc_store_get_tenant(s, "other", &t, &err), PC_E_NOTFOUND);
    uint64_t first = 0, last = 0;
    assert_int_equal(pc_store_log_bounds(s, &first, &last, &err), PC_OK);
    assert_int_equal(last, 2);
}

static void test_refuses_out_of_order_and_stale(void **state)
{
    char dir[256];
    pc_test_tmpdir(dir, sizeof(dir), "store");
    pc_store *s = open_store(dir, false, 0, 0);
    apply_ok(s, "acme", 1, 1, 100, 1);
    apply_ok(s, "acme", 2, 2, 100, 2);
    pc_store_stats before;
    pc_err err;
    assert_int_equal(pc_store_stats_get(s, &before, &err), PC_OK);

    struct {
        const char *tenant;
        uint64_t seq, version;
        int want;
    } cases[] = {
        {"acme", 2, 3, PC_E_DUPLICATE},     /* seq already applied */
        {"acme", 1, 9, PC_E_DUPLICATE},     /* older seq */
        {"acme", 4, 3, PC_E_SEQ_GAP},       /* seq 3 missing */
        {"acme", 3, 2, PC_E_STALE_VERSION}, /* version not above 2 */
        {"acme", 3, 1, PC_E_STALE_VERSION}, /* a replay of version 1 */
        {"other", 5, 1, PC_E_SEQ_GAP},      /* new tenant, still a gap */
        {"other", 2, 1, PC_E_DUPLICATE},    /* new tenant, old seq */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        entry e;
        assert_int_equal(entry_make(&e, cases[i].tenant, cases[i].seq, cases[i].version, 100, 9),
                         PC_OK);
        int rc = entry_apply(s, &e, &err);
        if (rc != cases[i].want)
            fail_msg("case %zu: expected %s, got %s (%s)", i, pc_err_name(cases[i].want),
                     pc_err_name(rc), err.msg);
        entry_free(&e);
        expect_unchanged(s);
    }

    /* A bundle that does not match the manifest's hash or size. */
    entry e;
    assert_int_equal(entry_make(&e, "acme", 3, 3, 100, 3), PC_OK);
    e.bundle[0] ^= 1;
    assert_int_equal(entry_apply(s, &e, &err), PC_E_HASH_MISMATCH);
    assert_int_equal(pc_store_apply(s, &e.sm, &e.m, e.bundle, e.len - 1, &err), PC_E_HASH_MISMATCH);
    assert_int_equal(pc_store_apply(s, &e.sm, &e.m, NULL, 0, &err), PC_E_HASH_MISMATCH);
    e.bundle[0] ^= 1;
    expect_unchanged(s);
    pc_store_stats after;
    assert_int_equal(pc_store_stats_get(s, &after, &err), PC_OK);
    assert_int_equal(after.blobs, before.blobs);
    assert_int_equal(after.entries_log, before.entries_log);

    /* The same entry, intact, is then accepted. */
    assert_int_equal(entry_apply(s, &e, &err), PC_OK);
    assert_int_equal(applied(s), 3);
    entry_free(&e);

    /* Versions never go backwards, even after a delete. */
    apply_ok(s, "acme", 4, 4, 0, 0);
    pc_tenant_state t;
    assert_int_equal(pc_store_get_tenant(s, "acme", &t, &err), PC_OK);
    assert_true(t.deleted);
    assert_int_equal(t.active_version, 0);
    assert_int_equal(t.last_version, 4);
    assert_int_equal(entry_make(&e, "acme", 5, 4, 100, 5), PC_OK);
    assert_int_equal(entry_apply(s, &e, &err), PC_E_STALE_VERSION);
    entry_free(&e);
    apply_ok(s, "acme", 5, 5, 100, 5);
    /* Across a reopen too. */
    pc_store_close(s);
    s = open_store(dir, false, 0, 0);
    assert_int_equal(entry_make(&e, "acme", 6, 5, 100, 6), PC_OK);
    assert_int_equal(entry_apply(s, &e, &err), PC_E_STALE_VERSION);
    entry_free(&e);
    pc_store_close(s);
    pc_test_rm_rf(dir);
}

/* Group commit: a batch is applied whole, each entry checked after the
 * ones before it, or not at all. */
static void test_batch_is_all_or_nothing(void **state)
{
    char dir[256];
    pc_test_tmpdir(dir, sizeof(dir), "store");
    pc_store *s = open_store(dir, false, 0, 0);
    apply_ok(s, "acme", 1, 1, 100, 1);
    apply_ok(s, "acme", 2, 2, 100, 2);
    pc_err err;
    /* Each bad batch has a good first entry and one bad one behind it. */
    struct {
        const char *why;
        int expect;
        struct {
            const char *tenant;
            uint64_t seq, version;
            size_t size;
        } e[3];
    } bad[] = {
        {"a seq gap inside", PC_E_SEQ_GAP, {{"other", 3, 1, 50}, {"acme", 5, 3, 50}}},
        {"a seq repeated inside", PC_E_DUPLICATE, {{"other", 3, 1, 50}, {"acme", 3, 3, 50}}},
        {"a version not above the one before it in the batch",
         PC_E_STALE_VERSION,
         {{"other", 3, 1, 50}, {"other", 4, 1, 60}}},
        {"a stale version", PC_E_STALE_VERSION, {{"other", 3, 1, 50}, {"acme", 4, 2, 50}}},
        {"already applied", PC_E_DUPLICATE, {{"acme", 2, 2, 100}, {"other", 3, 1, 50}}},
        {"a gap before it", PC_E_SEQ_GAP, {{"other", 4, 1, 50}, {"other", 5, 2, 50}}},
    };
    for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
        entry es[3];
        pc_store_item items[3];
        size_t n = 0;
        for (; n < 3 && bad[b].e[n].tenant != NULL; n++) {
            assert_int_equal(entry_make(&es[n], bad[b].e[n].tenant, bad[b].e[n].seq,
                                        bad[b].e[n].version, bad[b].e[n].size, (int)(10 + n)),
                             PC_OK);
            items[n] = (pc_store_item){&es[n].sm, &es[n].m, es[n].bundle, es[n].len, NULL, false};
        }
        int rc = pc_store_apply_batch(s, items, n, &err);
        if (rc != bad[b].expect)
            fail_msg("%s: expected %s, got %s (%s)", bad[b].why, pc_err_name(bad[b].expect),
                     pc_err_name(rc), err.msg);
        expect_unchanged(s);
        for (size_t i = 0; i < n; i++)
            entry_free(&es[i]);
    }
    assert_int_equal(pc_store_apply_batch(s, NULL, 0, &err), PC_E_INVALID);
    expect_unchanged(s);

    /* A good batch: a new tenant, its second version, a delete of the
     * first, each at its own seq, each readable alone afterwards. */
    entry es[3];
    assert_int_equal(entry_make(&es[0], "other", 3, 1, 70, 20), PC_OK);
    assert_int_equal(entry_make(&es[1], "other", 4, 2, 80, 21), PC_OK);
    assert_int_equal(entry_make(&es[2], "acme", 5, 3, 0, 0), PC_OK);
    pc_store_item items[3];
    for (size_t i = 0; i < 3; i++)
        items[i] = (pc_store_item){&es[i].sm, &es[i].m, es[i].bundle, es[i].len, NULL, false};
    if (pc_store_apply_batch(s, items, 3, &err) != PC_OK)
        fail_msg("good batch: %s", err.msg);
    assert_int_equal(applied(s), 5);
    pc_tenant_state t;
    assert_int_equal(pc_store_get_tenant(s, "other", &t, &err), PC_OK);
    assert_int_equal(t.active_version, 2);
    assert_int_equal(t.active_seq, 4);
    assert_int_equal(pc_store_get_tenant(s, "acme", &t, &err), PC_OK);
    assert_true(t.deleted);
    assert_int_equal(t.last_version, 3);
    for (uint64_t seq = 3; seq <= 5; seq++) {
        Popcast__LogRecord *rec = NULL;
        assert_int_equal(pc_store_get_log(s, seq, &rec, &err), PC_OK);
        assert_int_equal(rec->signed_->manifest.len, es[seq - 3].sm.manifest.len);
        assert_memory_equal(rec->signed_->manifest.data, es[seq - 3].sm.manifest.data,
                            es[seq - 3].sm.manifest.len);
        popcast__log_record__free_unpacked(rec, NULL);
    }
    /* The same batch again is a duplicate and changes nothing. */
    assert_int_equal(pc_store_apply_batch(s, items, 3, &err), PC_E_DUPLICATE);
    assert_int_equal(applied(s), 5);
    for (size_t i = 0; i < 3; i++)
        entry_free(&es[i]);
    pc_store_close(s);
    pc_test_rm_rf(dir);
}

/* Invariant 7: an idempotency key is stored with the entry it names, in
 * the same transaction; a key that does not match its entry, or that is
 * already kept, fails the whole batch; records past the retention before
 * the newest one are dropped. */
static void idem_record(Popcast__IdempotencyRecord *r, const char *tenant, const char *idem_key,
                        uint8_t fp[PC_HASH_LEN], uint64_t seq, int64_t ms)
{
    popcast__idempotency_record__init(r);
    r->tenant = (char *)tenant;
    r->key = (char *)idem_key;
    r->fingerprint.data = fp;
    r->fingerprint.len = PC_HASH_LEN;
    r->seq = seq;
    r->created_unix_ms = ms;
}

/* Applies a deploy of tenant at seq and version with key, made at ms. */
static void apply_keyed(pc_store *s, const char *tenant, uint64_t seq, uint64_t version,
                        const char *idem_key, int64_t ms)
{
    uint8_t fp[PC_HASH_LEN];
    memset(fp, 7, sizeof(fp));
    entry e;
    assert_int_equal(entry_make(&e, tenant, seq, version, 100, (int)seq), PC_OK);
    Popcast__IdempotencyRecord r;
    idem_record(&r, tenant, idem_key, fp, seq, ms);
    pc_store_item item = {&e.sm, &e.m, e.bundle, e.len, &r, false};
    pc_err err;
    if (pc_store_apply_batch(s, &item, 1, &err) != PC_OK)
        fail_msg("apply seq %llu with key %s: %s", (unsigned long long)seq, idem_key, err.msg);
    entry_free(&e);
}

/* The seq the kept key names, 0 if it is not kept. */
static uint64_t kept_seq(pc_store *s, const char *tenant, const char *idem_key)
{
    Popcast__IdempotencyRecord *got = NULL;
    pc_err err;
    int rc = pc_store_get_idempotency(s, tenant, idem_key, &got, &err);
    if (rc == PC_E_NOTFOUND)
        return 0;
    if (rc != PC_OK)
        fail_msg("key %s: %s", idem_key, err.msg);
    uint64_t seq = got->seq;
    popcast__idempotency_record__free_unpacked(got, NULL);
    return seq;
}

static void test_idempotency_keys(void **state)
{
    (void)state;
    char dir[256];
    pc_test_tmpdir(dir, sizeof(dir), "store");
    pc_store *s = open_store(dir, true, 0, 0);
    pc_err err;
    uint8_t fp[PC_HASH_LEN];
    memset(fp, 7, sizeof(fp));
    const int64_t day = PC_STORE_IDEMPOTENCY_RETAIN_MS;
    Popcast__IdempotencyRecord *got = NULL;
    assert_int_equal(pc_store_get_idempotency(s, "acme", "k1", &got, &err), PC_E_NOTFOUND);
    assert_int_equal(pc_store_get_idempotency(s, "acme", "bad key", &got, &err), PC_E_INVALID);
    assert_int_equal(pc_store_get_idempotency(s, "ACME", "k1", &got, &err), PC_E_INVALID);

    /* Refused, nothing stored: a record for another seq, another tenant,
     * a key that is not valid, a fingerprint of the wrong size. */
    struct {
        const char *why, *tenant, *key;
        uint64_t seq;
        size_t fp_len;
    } bad[] = {
        {"another seq", "acme", "k1", 2, PC_HASH_LEN},
        {"another tenant", "other", "k1", 1, PC_HASH_LEN},
        {"a key that is not valid", "acme", "k 1", 1, PC_HASH_LEN},
        {"a short fingerprint", "acme", "k1", 1, 4},
    };
    for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
        entry e;
        assert_int_equal(entry_make(&e, "acme", 1, 1, 100, 1), PC_OK);
        Popcast__IdempotencyRecord r;
        idem_record(&r, bad[b].tenant, bad[b].key, fp, bad[b].seq, 5 * day);
        r.fingerprint.len = bad[b].fp_len;
        pc_store_item item = {&e.sm, &e.m, e.bundle, e.len, &r, false};
        int rc = pc_store_apply_batch(s, &item, 1, &err);
        if (rc != PC_E_INVALID)
            fail_msg("%s: got %s (%s)", bad[b].why, pc_err_name(rc), err.msg);
        assert_int_equal(applied(s), 0);
        entry_free(&e);
    }
    assert_int_equal(pc_store_get_idempotency(s, "acme", "k1", &got, &err), PC_E_NOTFOUND);

    /* Stored with its entry. */
    entry e1;
    assert_int_equal(entry_make(&e1, "acme", 1, 1, 100, 1), PC_OK);
    Popcast__IdempotencyRecord r1;
    idem_record(&r1, "acme", "k1", fp, 1, 5 * day);
    pc_store_item item = {&e1.sm, &e1.m, e1.bundle, e1.len, &r1, false};
    if (pc_store_apply_batch(s, &item, 1, &err) != PC_OK)
        fail_msg("apply with a key: %s", err.msg);
    assert_int_equal(pc_store_get_idempotency(s, "acme", "k1", &got, &err), PC_OK);
    assert_int_equal(got->seq, 1);
    assert_string_equal(got->key, "k1");
    assert_memory_equal(got->fingerprint.data, fp, PC_HASH_LEN);
    popcast__idempotency_record__free_unpacked(got, NULL);
    /* Keys are per tenant. */
    assert_int_equal(pc_store_get_idempotency(s, "other", "k1", &got, &err), PC_E_NOTFOUND);

    /* The same key again, in a batch with another entry: all refused. */
    entry e2, e3;
    assert_int_equal(entry_make(&e2, "other", 2, 1, 100, 2), PC_OK);
    assert_int_equal(entry_make(&e3, "acme", 3, 2, 100, 3), PC_OK);
    Popcast__IdempotencyRecord r3;
    idem_record(&r3, "acme", "k1", fp, 3, 5 * day);
    pc_store_item two[] = {{&e2.sm, &e2.m, e2.bundle, e2.len, NULL, false},
                           {&e3.sm, &e3.m, e3.bundle, e3.len, &r3, false}};
    assert_int_equal(pc_store_apply_batch(s, two, 2, &err), PC_E_EXISTS);
    assert_int_equal(applied(s), 1);
    assert_int_equal(pc_store_get_tenant(s, "other", &(pc_tenant_state){0}, &err), PC_E_NOTFOUND);

    /* Retention: a record made more than a day after k1 drops it; one
     * made less than a day after k2 keeps k2. */
    idem_record(&r3, "acme", "k2", fp, 3, 5 * day + day / 2);
    if (pc_store_apply_batch(s, two, 2, &err) != PC_OK)
        fail_msg("apply with a second key: %s", err.msg);
    assert_int_equal(kept_seq(s, "acme", "k1"), 1);
    apply_keyed(s, "acme", 4, 3, "k3", 6 * day + 1);
    assert_int_equal(kept_seq(s, "acme", "k1"), 0);
    assert_int_equal(kept_seq(s, "acme", "k2"), 3);
    assert_int_equal(kept_seq(s, "acme", "k3"), 4);
    /* Once dropped, the key may name a new entry. */
    apply_keyed(s, "acme", 5, 4, "k1", 6 * day + 2);
    assert_int_equal(kept_seq(s, "acme", "k1"), 5);
    entry_free(&e1);
    entry_free(&e2);
    entry_free(&e3);
    pc_store_close(s);
}

static void test_blob_references(void **state)
{
    char dir[256];
    pc_test_tmpdir(dir, sizeof(dir), "store");
    pc_store *s = open_store(dir, false, 0, 0); /* agent: no history */
    pc_err err;
    entry v1, v2, v3;
    assert_int_equal(entry_make(&v1, "acme", 1, 1, 500, 1), PC_OK);
    assert_int_equal(entry_make(&v2, "acme", 2, 2, 500, 2), PC_OK);
    assert_int_equal(entry_make(&v3, "acme", 3, 3, 500, 1), PC_OK); /* v1's content again */

    assert_int_equal(entry_apply(s, &v1, &err), PC_OK);
    assert_int_equal(pc_store_set_live(s, "acme", 1, &err), PC_OK);
    assert_int_equal(entry_apply(s, &v2, &err), PC_OK);
    /* v1 is still live, v2 is active: both bundles are kept. */
    assert_true(pc_store_has_blob(s, v1.hash));
    assert_true(pc_store_has_blob(s, v2.hash));
    /* Only the active version can go live. */
    assert_int_equal(pc_store_set_live(s, "acme", 7, &err), PC_E_INVALID);
    assert_int_equal(pc_store_set_live(s, "nobody", 1, &err), PC_E_NOTFOUND);
    assert_int_equal(pc_store_set_live(s, "acme", 2, &err), PC_OK);
    assert_false(pc_store_has_blob(s, v1.hash));
    assert_true(pc_store_has_blob(s, v2.hash));
    pc_tenant_state t;
    assert_int_equal(pc_store_get_tenant(s, "acme", &t, &err), PC_OK);
    assert_int_equal(t.live_version, 2);
    assert_memory_equal(t.live_hash, v2.hash, PC_HASH_LEN);

    /* Same content under a new version: one blob, two references while
     * both are held, still there after the older one is released. */
    assert_int_equal(entry_apply(s, &v3, &err), PC_OK);
    assert_true(pc_store_has_blob(s, v3.hash));
    assert_int_equal(pc_store_set_live(s, "acme", 3, &err), PC_OK);
    assert_false(pc_store_has_blob(s, v2.hash));
    assert_true(pc_store_has_blob(s, v3.hash));
    pc_store_stats st;
    assert_int_equal(pc_store_stats_get(s, &st, &err), PC_OK);
    assert_int_equal(st.blobs, 1);
    pc_store_close(s);
    pc_test_rm_rf(dir);

    /* Controller: every version keeps its bundle. */
    pc_test_tmpdir(dir, sizeof(dir), "store");
    s = open_store(dir, true, 0, 0);
    assert_int_equal(entry_apply(s, &v1, &err), PC_OK);
    assert_int_equal(entry_apply(s, &v2, &err), PC_OK);
    assert_int_equal(entry_apply(s, &v3, &err), PC_OK);
    assert_true(pc_store_has_blob(s, v1.hash));
    assert_true(pc_store_has_blob(s, v2.hash));
    pc_store_close(s);
    pc_test_rm_rf(dir);
    entry_free(&v1);
    entry_free(&v2);
    entry_free(&v3);
}

/* Many records in one transaction: all of them, or (one bad) none. */
static void test_write_many_is_all_or_nothing(void **state)
{
    (void)state;
    char dir[256];
    pc_test_tmpdir(dir, sizeof(dir), "store");
    pc_store *s = open_store(dir, false, 0, 0);
    pc_err err;
    entry a1, b1;
    assert_int_equal(entry_make(&a1, "acme", 1, 1, 100, 1), PC_OK);
    assert_int_equal(entry_make(&b1, "beta", 2, 1, 100, 2), PC_OK);
    assert_int_equal(entry_apply(s, &a1, &err), PC_OK);
    assert_int_equal(entry_apply(s, &b1, &err), PC_OK);

    /* The last write names a version beta does not have: nothing lands. */
    pc_store_write bad[] = {
        {.tenant = "acme", .live_version = 1},
        {.meta_key = "outcome.acme", .meta_val = "x", .meta_len = 1},
        {.tenant = "beta", .live_version = 9},
    };
    assert_int_equal(pc_store_write_many(s, bad, 3, &err), PC_E_INVALID);
    pc_tenant_state t;
    assert_int_equal(pc_store_get_tenant(s, "acme", &t, &err), PC_OK);
    assert_int_equal(t.live_version, 0);
    uint8_t val[8];
    size_t len = 0;
    assert_int_equal(pc_store_meta_get(s, "outcome.acme", val, sizeof(val), &len, &err),
                     PC_E_NOTFOUND);
    /* A write that names nothing is refused before any transaction. */
    pc_store_write nameless[] = {{.live_version = 1}};
    assert_int_equal(pc_store_write_many(s, nameless, 1, &err), PC_E_INVALID);

    pc_store_write good[] = {
        {.tenant = "acme", .live_version = 1},
        {.meta_key = "outcome.acme", .meta_val = "x", .meta_len = 1},
        {.tenant = "beta", .live_version = 1},
    };
    assert_int_equal(pc_store_write_many(s, good, 3, &err), PC_OK);
    assert_int_equal(pc_store_get_tenant(s, "acme", &t, &err), PC_OK);
    assert_int_equal(t.live_version, 1);
    assert_int_equal(pc_store_get_tenant(s, "beta", &t, &err), PC_OK);
    assert_int_equal(t.live_version, 1);
    assert_int_equal(pc_store_meta_get(s, "outcome.acme", val, sizeof(val), &len, &err), PC_OK);
    assert_int_equal(len, 1);
    assert_true(pc_store_has_blob(s, a1.hash));
    pc_store_close(s);
    pc_test_rm_rf(dir);
    entry_free(&a1);
    entry_free(&b1);
}

/* Bytes the store's data file has on disk (blocks, not its length). */
static uint64_t data_file_disk_bytes(const char *dir)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/data.mdb", dir);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (uint64_t)st.st_blocks * 512;
}

static void test_map_full_is_an_error(void **state)
{
    char dir[256];
    pc_test_tmpdir(dir, sizeof(dir), "store");
    /* 1 MiB map that may grow to 4 MiB; 256 KiB bundles fill it fast. */
    pc_store *s = open_store(dir, true, 1 << 20, 4 << 20);
    pc_err err;
    uint64_t seq = 0;
    int rc = PC_OK;
    for (int i = 1; i <= 64 && rc == PC_OK; i++) {
        entry e;
        assert_int_equal(entry_make(&e, "big", seq + 1, seq + 1, 256 * 1024, i), PC_OK);
        rc = entry_apply(s, &e, &err);
        if (rc == PC_OK)
            seq++;
        entry_free(&e);
    }
    assert_int_equal(rc, PC_E_STORE);
    assert_non_null(strstr(err.msg, "full"));
    pc_store_stats st;
    assert_int_equal(pc_store_stats_get(s, &st, &err), PC_OK);
    assert_true(st.map_grows >= 1);
    assert_true(st.map_size <= 4u << 20);
    assert_true(seq >= 4); /* the map did grow past its first 1 MiB */
    /* The failed entry left nothing behind, and the store still works. */
    assert_int_equal(applied(s), seq);
    pc_tenant_state t;
    assert_int_equal(pc_store_get_tenant(s, "big", &t, &err), PC_OK);
    assert_int_equal(t.active_version, seq);
    assert_int_equal(t.last_version, seq);
    assert_int_equal(st.entries_log, seq);
    assert_int_equal(st.blobs, seq);
    assert_int_equal(pc_store_meta_put(s, "k", "v", 1, &err), PC_OK);
    pc_store_close(s);
    pc_test_rm_rf(dir);
}

/* The same with the map written in place: growth reserves the disk
 * first, so every page the map can write has its block. */
/* So that a failed write-map test does not leave the mode set for the
 * tests after it. */
static int reset_write_map(void **state)
{
    (void)state;
    write_map = false;
    return 0;
}

static void test_write_map_grows_with_its_disk(void **state)
{
    write_map = true;
    test_map_full_is_an_error(state);
    char dir[256];
    pc_test_tmpdir(dir, sizeof(dir), "store");
    pc_store *s = open_store(dir, true, 1 << 20, 8 << 20);
    assert_true(data_file_disk_bytes(dir) >= 1u << 20);
    uint64_t seq = 0;
    for (int i = 1; i <= 8; i++) {
        apply_ok(s, "big", seq + 1, seq + 1, 256 * 1024, i);
        seq++;
    }
    pc_store_stats st;
    pc_err err;
    assert_int_equal(pc_store_stats_get(s, &st, &err), PC_OK);
    assert_true(st.map_grows >= 1);
    assert_true(data_file_disk_bytes(dir) >= st.map_size);
    pc_store_close(s);
    /* The file is an ordinary LMDB store: opened without the flag, it
     * holds what was written through the map. */
    write_map = false; /* (reset_write_map also does, if an assert failed) */
    s = open_store(dir, true, 0, 0);
    assert_int_equal(applied(s), seq);
    pc_tenant_state t;
    assert_int_equal(pc_store_get_tenant(s, "big", &t, &err), PC_OK);
    assert_int_equal(t.active_version, seq);
    pc_store_close(s);
    pc_test_rm_rf(dir);
}

/* Runs body(dir) in a child process whose files cannot grow past limit
 * bytes (RLIMIT_FSIZE, SIGXFSZ ignored: writes past it fail with EFBIG,
 * as a full disk fails them); the test fails unless body returns 0. */
static void with_file_limit(rlim_t limit, int (*body)(const char *dir), const char *dir)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit lim = {.rlim_cur = limit, .rlim_max = limit};
        _exit(setrlimit(RLIMIT_FSIZE, &lim) != 0 ? 100 : body(dir));
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static int growth_past_the_limit(const char *dir)
{
    pc_store_options opt = {
        .map_size = 1 << 20, .map_size_max = 8 << 20, .keep_history = true, .write_map = true};
    pc_store *s = NULL;
    pc_err err;
    if (pc_store_open(&s, dir, &opt, &err) != PC_OK)
        return 11;
    uint64_t seq = 0;
    int rc = PC_OK;
    for (int i = 1; i <= 16 && rc == PC_OK; i++) {
        entry e;
        if (entry_make(&e, "big", seq + 1, seq + 1, 256 * 1024, i) != PC_OK)
            return 12;
        rc = entry_apply(s, &e, &err);
        if (rc == PC_OK)
            seq++;
        entry_free(&e);
    }
    if (rc != PC_E_STORE || strstr(err.msg, "cannot reserve") == NULL) {
        fprintf(stderr, "growth: rc %d: %s\n", rc, rc == PC_OK ? "" : err.msg);
        return 13;
    }
    uint64_t now = 0;
    if (pc_store_applied_seq(s, &now, &err) != PC_OK || now != seq || seq == 0)
        return 14;
    pc_store_close(s);
    return 0;
}

/* A disk that cannot give the next growth its blocks (here a file size
 * limit) is "store is full" at the growth, with nothing half-written,
 * not a SIGBUS on a page written later. */
static void test_write_map_unreservable_growth_is_an_error(void **state)
{
    (void)state;
    char dir[256];
    pc_test_tmpdir(dir, sizeof(dir), "store");
    with_file_limit(3u << 19, growth_past_the_limit, dir); /* 1.5 MiB */
    pc_test_rm_rf(dir);
}

static int open_past_the_limit(const char *dir)
{
    pc_store_options opt = {.map_size = 1 << 20, .write_map = true};
    pc_store *s = NULL;
    pc_err err;
    if (pc_store_open(&s, dir, &opt, &err) != PC_OK) {
        fprintf(stderr, "open: %s\n", err.msg);
        return 11;
    }
    pc_store_stats st;
    if (pc_store_stats_get(s, &st, &err) != PC_OK || st.write_map)
        return 12;
    entry e;
    if (entry_make(&e, "small", 1, 1, 1000, 1) != PC_OK || entry_apply(s, &e, &err) != PC_OK)
        return 13;
    entry_free(&e);
    uint64_t seq = 0;
    if (pc_store_applied_seq(s, &seq, &err) != PC_OK || seq != 1)
        return 14;
    pc_store_close(s);
    return 0;
}

/* A store whose map the disk cannot reserve at open still opens, with
 * LMDB's page copies, and works: an agent serves from what it has. */
static void test_write_map_falls_back_when_unreservable(void **state)
{
    (void)state;
    char dir[256];
    pc_test_tmpdir(dir, sizeof(dir), "store");
    with_file_limit(512 * 1024, open_past_the_limit, dir);
    /* Where the disk can take it, the map is written in place. */
    write_map = true;
    pc_store *s = open_store(dir, false, 0, 0);
    write_map = false;
    pc_store_stats st;
    pc_err err;
    assert_int_equal(pc_store_stats_get(s, &st, &err), PC_OK);
    assert_true(st.write_map);
    assert_int_equal(applied(s), 1);
    pc_store_close(s);
    pc_test_rm_rf(dir);
}

static void test_one_process_per_directory(void **state)
{
    char dir[256];
    pc_test_tmpdir(dir, sizeof(dir), "store");
    pc_store *s = open_store(dir, false, 0, 0);
    pc_store *second = NULL;
    pc_err err;
    pc_store_options opt = {0};
    assert_int_equal(pc_store_open(&second, dir, &opt, &err), PC_E_UNAVAILABLE);
    assert_non_null(strstr(err.msg, "in use"));
    assert_null(second);
    pc_store_close(s);
    /* Free again once closed. */
    assert_int_equal(pc_store_open(&second, dir, &opt, &err), PC_OK);
    pc_store_close(second);
    /* A directory that does not exist is an error, not a crash. */
    assert_int_not_equal(pc_store_open(&second, "/nonexistent/popcast/dir", &opt, &err), PC_OK);
    pc_test_rm_rf(dir);
}

/* Invariant 6: a rotation is kept outside the log, in the same
 * transaction, across reopen and snapshot install; a rotation without a
 * key, or one refused for its seq, stores nothing. */
static int collect_rotation(void *arg, const Popcast__SignedManifest *sm)
{
    uint64_t *seqs = arg;
    Popcast__Manifest *m = popcast__manifest__unpack(NULL, sm->manifest.len, sm->manifest.data);
    assert_non_null(m);
    seqs[++seqs[0]] = m->seq;
    popcast__manifest__free_unpacked(m, NULL);
    return 0;
}

static void rotation_make(Popcast__SignedManifest *sm, Popcast__Manifest *m, uint64_t seq,
                          const pc_public_key *next, size_t key_len)
{
    popcast__manifest__init(m);
    m->kind = POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION;
    m->seq = seq;
    m->next_public_key.data = (uint8_t *)next->pk;
    m->next_public_key.len = key_len;
    assert_int_equal(pc_envelope_sign_manifest(&key, m, sm, NULL), PC_OK);
}

static void test_rotations_are_kept(void **state)
{
    char dir[256], dir2[256];
    pc_test_tmpdir(dir, sizeof(dir), "store");
    pc_test_tmpdir(dir2, sizeof(dir2), "store");
    pc_store *s = open_store(dir, false, 0, 0);
    pc_signing_key next;
    assert_int_equal(pc_keygen(&next), PC_OK);
    pc_err err;
    apply_ok(s, "a", 1, 1, 100, 1);
    Popcast__SignedManifest sm, bad_sm, gap_sm;
    Popcast__Manifest m, bad, gap;
    rotation_make(&bad_sm, &bad, 2, &next.pub, 16);
    assert_int_equal(pc_store_apply(s, &bad_sm, &bad, NULL, 0, &err), PC_E_INVALID);
    rotation_make(&gap_sm, &gap, 5, &next.pub, PC_PK_LEN);
    assert_int_equal(pc_store_apply(s, &gap_sm, &gap, NULL, 0, &err), PC_E_SEQ_GAP);
    uint64_t seqs[8] = {0};
    assert_int_equal(pc_store_foreach_rotation(s, collect_rotation, seqs, &err), PC_OK);
    assert_int_equal(seqs[0], 0);
    assert_int_equal(applied(s), 1);
    rotation_make(&sm, &m, 2, &next.pub, PC_PK_LEN);
    assert_int_equal(pc_store_apply(s, &sm, &m, NULL, 0, &err), PC_OK);
    apply_ok(s, "a", 3, 2, 100, 2);
    pc_store_close(s);
    s = open_store(dir, false, 0, 0);
    memset(seqs, 0, sizeof(seqs));
    assert_int_equal(pc_store_foreach_rotation(s, collect_rotation, seqs, &err), PC_OK);
    assert_int_equal(seqs[0], 1);
    assert_int_equal(seqs[1], 2);
    pc_store_close(s);
    /* A snapshot carrying the rotation stores it on an empty store. */
    pc_store *d = open_store(dir2, false, 0, 0);
    entry a2;
    assert_int_equal(entry_make(&a2, "a", 3, 2, 100, 2), PC_OK);
    pc_store_item items[] = {{&a2.sm, &a2.m, a2.bundle, a2.len, NULL, false},
                             {&sm, &m, NULL, 0, NULL, false}};
    bool done[2];
    assert_int_equal(pc_store_install_snapshot(d, 3, items, 2, done, &err), PC_OK);
    assert_false(done[1]); /* a rotation changes no tenant */
    memset(seqs, 0, sizeof(seqs));
    assert_int_equal(pc_store_foreach_rotation(d, collect_rotation, seqs, &err), PC_OK);
    assert_int_equal(seqs[0], 1);
    assert_int_equal(seqs[1], 2);
    pc_store_close(d);
    entry_free(&a2);
    pc_envelope_signed_clear(&sm);
    pc_envelope_signed_clear(&bad_sm);
    pc_envelope_signed_clear(&gap_sm);
    pc_test_rm_rf(dir);
    pc_test_rm_rf(dir2);
}

/* Every walker (store.h, top): a callback returning non-zero stops the
 * walk at once and the walker returns that very value, with a message in
 * err; a callback returning 0 sees every item. A walker that swallowed
 * the value would let a caller go on as if the walk had succeeded (an
 * agent starting with a key chain it could not rebuild). */
typedef struct stopper {
    int calls;
    int stop_at; /* the call (1-based) that returns ret; 0: never */
    int ret;
} stopper;

static int stop_now(stopper *st)
{
    st->calls++;
    return st->calls == st->stop_at ? st->ret : 0;
}

static int stop_tenant(void *arg, const pc_tenant_state *t)
{
    (void)t;
    return stop_now(arg);
}

static int stop_version(void *arg, uint64_t version, uint64_t seq)
{
    (void)version;
    (void)seq;
    return stop_now(arg);
}

static int stop_meta(void *arg, const char *name, const uint8_t *val, size_t len)
{
    (void)name;
    (void)val;
    (void)len;
    return stop_now(arg);
}

static int stop_rotation(void *arg, const Popcast__SignedManifest *sm)
{
    (void)sm;
    return stop_now(arg);
}

static int stop_snapshot(void *arg, const pc_tenant_state *t, uint64_t latest_seq)
{
    (void)t;
    (void)latest_seq;
    return stop_now(arg);
}

enum { W_TENANT, W_VERSION, W_META, W_ROTATION, W_SNAPSHOT, W_COUNT };
static const char *const walker_name[W_COUNT] = {
    "foreach_tenant", "foreach_version", "meta_foreach", "foreach_rotation", "snapshot_read"};

static int walk(pc_store *s, int which, stopper *st, pc_err *err)
{
    uint64_t seq = 0;
    switch (which) {
    case W_TENANT: return pc_store_foreach_tenant(s, stop_tenant, st, err);
    case W_VERSION: return pc_store_foreach_version(s, "a", stop_version, st, err);
    case W_META: return pc_store_meta_foreach(s, "walk.", stop_meta, st, err);
    case W_ROTATION: return pc_store_foreach_rotation(s, stop_rotation, st, err);
    default: return pc_store_snapshot_read(s, &seq, stop_snapshot, st, err);
    }
}

static void test_walkers_return_callback_errors(void **state)
{
    (void)state;
    char dir[256];
    pc_test_tmpdir(dir, sizeof(dir), "store");
    pc_store *s = open_store(dir, true, 0, 0);
    pc_signing_key k1, k2;
    assert_int_equal(pc_keygen(&k1), PC_OK);
    assert_int_equal(pc_keygen(&k2), PC_OK);
    pc_err err;
    /* Three of each: tenants a, b, c; versions 1-3 of a; three meta keys;
     * three rotations. */
    apply_ok(s, "a", 1, 1, 100, 1);
    apply_ok(s, "a", 2, 2, 100, 2);
    apply_ok(s, "a", 3, 3, 100, 3);
    apply_ok(s, "b", 4, 1, 100, 4);
    apply_ok(s, "c", 5, 1, 100, 5);
    const pc_public_key *next[] = {&k1.pub, &k2.pub, &k1.pub};
    for (uint64_t i = 0; i < 3; i++) {
        Popcast__SignedManifest sm;
        Popcast__Manifest m;
        rotation_make(&sm, &m, 6 + i, next[i], PC_PK_LEN);
        assert_int_equal(pc_store_apply(s, &sm, &m, NULL, 0, &err), PC_OK);
        pc_envelope_signed_clear(&sm);
    }
    for (int i = 0; i < 3; i++) {
        char k[32];
        snprintf(k, sizeof(k), "walk.%d", i);
        assert_int_equal(pc_store_meta_put(s, k, "v", 1, &err), PC_OK);
    }
    /* Decoy keys around the prefix are not walked. */
    assert_int_equal(pc_store_meta_put(s, "walj", "v", 1, &err), PC_OK);
    assert_int_equal(pc_store_meta_put(s, "walk/", "v", 1, &err), PC_OK);

    const int codes[] = {PC_E_INVALID, PC_E_STORE, PC_E_UNTRUSTED_KEY, 7};
    for (int w = 0; w < W_COUNT; w++) {
        /* A callback that never stops sees every item, and the walk
         * succeeds. */
        stopper all = {0, 0, 0};
        if (walk(s, w, &all, &err) != PC_OK)
            fail_msg("%s: %s", walker_name[w], err.msg);
        assert_int_equal(all.calls, 3);
        for (size_t c = 0; c < sizeof(codes) / sizeof(codes[0]); c++) {
            for (int at = 1; at <= 3; at++) {
                stopper st = {0, at, codes[c]};
                pc_err_clear(&err);
                int rc = walk(s, w, &st, &err);
                if (rc != codes[c])
                    fail_msg("%s: callback returned %d at item %d, walker returned %d",
                             walker_name[w], codes[c], at, rc);
                /* Stopped where the callback said so. */
                assert_int_equal(st.calls, at);
                /* And the caller gets a message to show. */
                assert_true(err.msg[0] != '\0');
            }
        }
        /* Without an err to fill, the value still comes back. */
        stopper st = {0, 2, PC_E_LIMIT};
        assert_int_equal(walk(s, w, &st, NULL), PC_E_LIMIT);
        assert_int_equal(st.calls, 2);
    }
    pc_store_close(s);
    pc_test_rm_rf(dir);
}

static void test_snapshot_install(void **state)
{
    char src_dir[256], dst_dir[256];
    pc_test_tmpdir(src_dir, sizeof(src_dir), "store");
    pc_test_tmpdir(dst_dir, sizeof(dst_dir), "store");
    pc_store *dst = open_store(dst_dir, false, 0, 0);
    pc_err err;
    entry a2, b1, c3;
    assert_int_equal(entry_make(&a2, "a", 7, 2, 300, 1), PC_OK);
    assert_int_equal(entry_make(&b1, "b", 9, 1, 300, 2), PC_OK);
    assert_int_equal(entry_make(&c3, "c", 10, 3, 0, 0), PC_OK); /* deleted tenant */
    pc_store_item items[] = {{&a2.sm, &a2.m, a2.bundle, a2.len, NULL, false},
                             {&b1.sm, &b1.m, b1.bundle, b1.len, NULL, false},
                             {&c3.sm, &c3.m, NULL, 0, NULL, false}};
    /* A tampered item makes the whole snapshot fail, with nothing stored. */
    b1.bundle[3] ^= 1;
    bool done[3];
    assert_int_not_equal(pc_store_install_snapshot(dst, 12, items, 3, done, &err), PC_OK);
    assert_int_equal(applied(dst), 0);
    pc_tenant_state t;
    assert_int_equal(pc_store_get_tenant(dst, "a", &t, &err), PC_E_NOTFOUND);
    b1.bundle[3] ^= 1;

    assert_int_equal(pc_store_install_snapshot(dst, 12, items, 3, done, &err), PC_OK);
    assert_int_equal(applied(dst), 12);
    assert_int_equal(pc_store_get_tenant(dst, "a", &t, &err), PC_OK);
    assert_int_equal(t.active_version, 2);
    assert_int_equal(pc_store_get_tenant(dst, "c", &t, &err), PC_OK);
    assert_true(t.deleted);
    assert_int_equal(t.last_version, 3);
    /* Not ahead of the applied seq: refused. */
    assert_int_equal(pc_store_install_snapshot(dst, 12, items, 3, done, &err), PC_E_DUPLICATE);
    /* The log continues after the snapshot's seq. */
    apply_ok(dst, "a", 13, 3, 300, 3);
    uint64_t first = 0, last = 0;
    assert_int_equal(pc_store_log_bounds(dst, &first, &last, &err), PC_OK);
    assert_int_equal(last, 13);
    pc_store_close(dst);

    /* An older snapshot never rolls a tenant back. */
    dst = open_store(dst_dir, false, 0, 0);
    entry a1;
    assert_int_equal(entry_make(&a1, "a", 3, 1, 300, 4), PC_OK);
    pc_store_item old[] = {{&a1.sm, &a1.m, a1.bundle, a1.len, NULL, false}};
    assert_int_equal(pc_store_install_snapshot(dst, 20, old, 1, done, &err), PC_OK);
    assert_false(done[0]);
    assert_int_equal(pc_store_get_tenant(dst, "a", &t, &err), PC_OK);
    assert_int_equal(t.active_version, 3);
    pc_store_close(dst);
    entry_free(&a1);
    entry_free(&a2);
    entry_free(&b1);
    entry_free(&c3);
    pc_test_rm_rf(src_dir);
    pc_test_rm_rf(dst_dir);
}

/* A STAGE of tenant's version at seq (no content). */
static int stage_make(entry *e, const char *tenant, uint64_t seq, uint64_t version)
{
    memset(e, 0, sizeof(*e));
    snprintf(e->tenant, sizeof(e->tenant), "%s", tenant);
    popcast__manifest__init(&e->m);
    e->m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_STAGE;
    e->m.tenant = e->tenant;
    e->m.version = version;
    e->m.seq = seq;
    return pc_envelope_sign_manifest(&key, &e->m, &e->sm, NULL);
}

static uint64_t stage_of(pc_store *s, const char *tenant)
{
    pc_tenant_state t;
    assert_int_equal(pc_store_get_tenant(s, tenant, &t, NULL), PC_OK);
    return t.stage_seq;
}

static int record_stage(void *arg, const pc_tenant_state *t, uint64_t latest_seq)
{
    uint64_t *out = arg;
    if (strcmp(t->tenant, "a") == 0) {
        out[0] = latest_seq;
        out[1] = t->stage_seq;
        out[2] = t->base_seq;
    }
    return 0;
}

/* Invariant 8: a STAGE only records its seq on the tenant's active
 * version, changes no version, and is reset by any later change; one for
 * a version never made is refused with nothing changed; a snapshot reads
 * and installs it after its version. */
static void test_stage_entries(void **state)
{
    char d[256], d2[256];
    pc_test_tmpdir(d, sizeof(d), "store");
    pc_test_tmpdir(d2, sizeof(d2), "store");
    pc_store *s = open_store(d, false, 0, 0);
    pc_err err;
    entry st;
    apply_ok(s, "a", 1, 1, 100, 1);
    apply_ok(s, "a", 2, 2, 100, 2);
    assert_int_equal(stage_make(&st, "a", 3, 3), PC_OK);
    assert_int_equal(entry_apply(s, &st, &err), PC_E_INVALID);
    assert_int_equal(applied(s), 2);
    entry_free(&st);
    assert_int_equal(stage_make(&st, "a", 3, 2), PC_OK);
    assert_int_equal(entry_apply(s, &st, &err), PC_OK);
    entry_free(&st);
    assert_int_equal(applied(s), 3);
    assert_int_equal(stage_of(s, "a"), 3);
    pc_tenant_state t;
    assert_int_equal(pc_store_get_tenant(s, "a", &t, &err), PC_OK);
    assert_int_equal(t.active_version, 2);
    assert_int_equal(t.last_version, 2);
    /* Versions still only grow: the stage did not make room for a 2. */
    entry again;
    assert_int_equal(entry_make(&again, "a", 4, 2, 100, 9), PC_OK);
    assert_int_equal(entry_apply(s, &again, &err), PC_E_STALE_VERSION);
    entry_free(&again);
    /* An overtaken stage (of version 1) is logged and changes nothing. */
    assert_int_equal(stage_make(&st, "a", 4, 1), PC_OK);
    assert_int_equal(entry_apply(s, &st, &err), PC_OK);
    entry_free(&st);
    assert_int_equal(applied(s), 4);
    assert_int_equal(stage_of(s, "a"), 3);
    uint64_t seen[3] = {0, 0, 0}, seq = 0;
    assert_int_equal(pc_store_snapshot_read(s, &seq, record_stage, seen, &err), PC_OK);
    assert_int_equal(seen[0], 2);
    assert_int_equal(seen[1], 3);

    /* A snapshot installs the version, then its stage. */
    pc_store *dst = open_store(d2, false, 0, 0);
    entry v2, st3;
    assert_int_equal(entry_make(&v2, "a", 2, 2, 100, 2), PC_OK);
    assert_int_equal(stage_make(&st3, "a", 3, 2), PC_OK);
    pc_store_item items[] = {{&v2.sm, &v2.m, v2.bundle, v2.len, NULL, false},
                             {&st3.sm, &st3.m, NULL, 0, NULL, false}};
    bool done[2];
    assert_int_equal(pc_store_install_snapshot(dst, 4, items, 2, done, &err), PC_OK);
    assert_true(done[0] && done[1]);
    assert_int_equal(stage_of(dst, "a"), 3);
    pc_store_close(dst);
    entry_free(&v2);
    entry_free(&st3);

    /* Any other change of the tenant resets it. */
    apply_ok(s, "a", 5, 3, 100, 3);
    assert_int_equal(stage_of(s, "a"), 0);
    pc_store_close(s);
    pc_test_rm_rf(d);
    pc_test_rm_rf(d2);
}

/* An entry re-signed with a target (NULL: everyone). */
static void retarget(entry *e, Popcast__Target *target)
{
    pc_envelope_signed_clear(&e->sm);
    e->m.target = target;
    assert_int_equal(pc_envelope_sign_manifest(&key, &e->m, &e->sm, NULL), PC_OK);
}

static void apply_targeted(pc_store *s, const char *tenant, uint64_t seq, uint64_t version,
                           Popcast__Target *target)
{
    entry e;
    pc_err err;
    assert_int_equal(entry_make(&e, tenant, seq, version, 100, (int)seq), PC_OK);
    retarget(&e, target);
    if (entry_apply(s, &e, &err) != PC_OK)
        fail_msg("apply %s seq %llu: %s", tenant, (unsigned long long)seq, err.msg);
    entry_free(&e);
}

static void expect_base(pc_store *s, bool targeted, uint64_t base_seq)
{
    pc_tenant_state t;
    assert_int_equal(pc_store_get_tenant(s, "a", &t, NULL), PC_OK);
    if (t.active_targeted != targeted || t.base_seq != base_seq)
        fail_msg("active_targeted %d base_seq %llu, expected %d %llu", t.active_targeted,
                 (unsigned long long)t.base_seq, targeted, (unsigned long long)base_seq);
}

/* Invariant 8's base: while the active version is targeted, the store
 * names the version the other agents serve; a snapshot carries it, and an
 * agent can install it live in the same transaction, keeping its blob. */
static void test_base_version(void **state)
{
    char d[256], d2[256];
    pc_test_tmpdir(d, sizeof(d), "store");
    pc_test_tmpdir(d2, sizeof(d2), "store");
    pc_store *s = open_store(d, true, 0, 0);
    Popcast__Target nobody = POPCAST__TARGET__INIT;
    apply_ok(s, "a", 1, 1, 100, 1);
    expect_base(s, false, 0);
    apply_targeted(s, "a", 2, 2, &nobody);
    expect_base(s, true, 1);
    apply_targeted(s, "a", 3, 3, &nobody); /* v2 never went everywhere */
    expect_base(s, true, 1);
    uint64_t seen[3] = {0, 0, 0}, seq = 0;
    pc_err err;
    assert_int_equal(pc_store_snapshot_read(s, &seq, record_stage, seen, &err), PC_OK);
    assert_int_equal(seen[2], 1);
    entry st;
    assert_int_equal(stage_make(&st, "a", 4, 3), PC_OK); /* everyone */
    assert_int_equal(entry_apply(s, &st, &err), PC_OK);
    entry_free(&st);
    expect_base(s, false, 0);
    apply_targeted(s, "a", 5, 4, &nobody);
    expect_base(s, true, 3);
    apply_ok(s, "a", 6, 5, 0, 0); /* a delete */
    expect_base(s, false, 0);
    pc_store_close(s);

    /* An agent installing [base live, held version]: v1 serves, its blob
     * stays although v2 is the active version. */
    pc_store *dst = open_store(d2, false, 0, 0);
    entry v1, v2;
    assert_int_equal(entry_make(&v1, "a", 1, 1, 100, 1), PC_OK);
    assert_int_equal(entry_make(&v2, "a", 2, 2, 100, 2), PC_OK);
    retarget(&v2, &nobody);
    pc_store_item items[] = {{&v1.sm, &v1.m, v1.bundle, v1.len, NULL, true},
                             {&v2.sm, &v2.m, v2.bundle, v2.len, NULL, false}};
    bool done[2];
    assert_int_equal(pc_store_install_snapshot(dst, 3, items, 2, done, &err), PC_OK);
    pc_tenant_state t;
    assert_int_equal(pc_store_get_tenant(dst, "a", &t, &err), PC_OK);
    assert_int_equal(t.active_version, 2);
    assert_int_equal(t.live_version, 1);
    assert_true(pc_store_has_blob(dst, v1.hash));
    assert_true(pc_store_has_blob(dst, v2.hash));
    pc_store_close(dst);
    entry_free(&v1);
    entry_free(&v2);
    pc_test_rm_rf(d);
    pc_test_rm_rf(d2);
}

static void test_copy_and_replace(void **state)
{
    char a_dir[256], b_dir[256], copy[400];
    pc_test_tmpdir(a_dir, sizeof(a_dir), "store");
    pc_test_tmpdir(b_dir, sizeof(b_dir), "store");
    snprintf(copy, sizeof(copy), "%s/snapshot.mdb", b_dir);
    pc_store *a = open_store(a_dir, true, 0, 0);
    for (uint64_t seq = 1; seq <= 5; seq++)
        apply_ok(a, "alpha", seq, seq, 300, (int)seq);
    pc_err err;
    assert_int_equal(pc_store_copy(a, copy, &err), PC_OK);
    pc_store *b = open_store(b_dir, true, 0, 0);
    apply_ok(b, "beta", 1, 1, 300, 9);
    assert_int_equal(pc_store_replace(b, copy, &err), PC_OK);
    /* b is now exactly a: alpha at 5, no beta, and it keeps working. */
    assert_int_equal(applied(b), 5);
    pc_tenant_state t;
    assert_int_equal(pc_store_get_tenant(b, "alpha", &t, &err), PC_OK);
    assert_int_equal(t.active_version, 5);
    assert_int_equal(pc_store_get_tenant(b, "beta", &t, &err), PC_E_NOTFOUND);
    apply_ok(b, "alpha", 6, 6, 300, 6);
    assert_int_equal(applied(b), 6);
    /* A missing file is an error and leaves the store as it was. */
    assert_int_not_equal(pc_store_replace(b, copy, &err), PC_OK);
    assert_int_equal(applied(b), 6);
    pc_store_close(a);
    pc_store_close(b);
    /* And the replaced store reopens from disk as the new one. */
    b = open_store(b_dir, true, 0, 0);
    assert_int_equal(applied(b), 6);
    pc_store_close(b);
    pc_test_rm_rf(a_dir);
    pc_test_rm_rf(b_dir);
}

/* Resident KiB of this process's mappings of dir's data file. */
static uint64_t store_rss_kib(const char *dir)
{
    char path[512], line[1024];
    snprintf(path, sizeof(path), "%s/data.mdb", dir);
    FILE *f = fopen("/proc/self/smaps", "r");
    assert_non_null(f);
    bool in_store = false;
    uint64_t kib = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long lo, hi;
        unsigned long long rss;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '/') != NULL)
            in_store = strstr(line, path) != NULL;
        else if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2)
            in_store = false;
        else if (in_store && sscanf(line, "Rss: %llu kB", &rss) == 1)
            kib += rss;
    }
    fclose(f);
    return kib;
}

#define RELEASE_ENTRIES 48
#define RELEASE_SIZE    (64 * 1024)

typedef struct release_writer {
    pc_store *s;
    uint64_t from; /* applies seqs from..from + RELEASE_ENTRIES - 1 */
    atomic_int done;
} release_writer;

static void *release_writer_run(void *arg)
{
    release_writer *w = arg;
    for (uint64_t i = 0; i < RELEASE_ENTRIES; i++)
        apply_ok(w->s, "late", w->from + i, i + 1, RELEASE_SIZE, (int)(1000 + i));
    atomic_store(&w->done, 1);
    return NULL;
}

/* Every blob of seq 1..n (tenant "early": fill = seq; "late": 1000 +
 * version - 1) reads back whole and with its hash. */
static void expect_blobs(pc_store *s, const char *tenant, uint64_t versions, int fill_base)
{
    for (uint64_t v = 1; v <= versions; v++) {
        entry e;
        assert_int_equal(entry_make(&e, tenant, v, v, RELEASE_SIZE, fill_base + (int)v), PC_OK);
        uint8_t *got = NULL;
        size_t len = 0;
        pc_err err;
        assert_int_equal(pc_store_get_blob(s, e.hash, &got, &len, &err), PC_OK);
        assert_int_equal(len, e.len);
        assert_memory_equal(got, e.bundle, len);
        free(got);
        entry_free(&e);
    }
}

/* pc_store_release_pages: the store's pages leave the process's RSS and
 * nothing is lost, in either write mode: pages written through the map
 * and released while a writer keeps writing are still there (read back,
 * and after a reopen). A released private copy would read back as
 * zeroes, or as the file before the writes. */
static void released_pages_keep_their_data(void)
{
    char dir[256];
    pc_test_tmpdir(dir, sizeof(dir), "store");
    pc_store *s = open_store(dir, true, 0, 0);
    for (uint64_t v = 1; v <= RELEASE_ENTRIES; v++)
        apply_ok(s, "early", v, v, RELEASE_SIZE, (int)v);
    expect_blobs(s, "early", RELEASE_ENTRIES, 0); /* every page touched */
    uint64_t before = store_rss_kib(dir);
    assert_true(before >= RELEASE_ENTRIES * RELEASE_SIZE / 1024 / 2);
    assert_true(pc_store_release_pages(s) > 0);
    uint64_t after = store_rss_kib(dir);
    print_message("store pages resident: %llu KiB before, %llu KiB after (write_map %d)\n",
                  (unsigned long long)before, (unsigned long long)after, write_map);
    assert_true(after < before / 8);
    expect_blobs(s, "early", RELEASE_ENTRIES, 0);

    release_writer w = {.s = s, .from = RELEASE_ENTRIES + 1};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, release_writer_run, &w), 0);
    uint64_t releases = 0;
    while (!atomic_load(&w.done)) {
        pc_store_release_pages(s);
        releases++;
        sched_yield();
    }
    pthread_join(t, NULL);
    assert_true(releases > 0);
    assert_int_equal(applied(s), 2 * RELEASE_ENTRIES);
    expect_blobs(s, "late", RELEASE_ENTRIES, 999);
    pc_store_release_pages(s);
    pc_store_close(s);
    bool was = write_map;
    write_map = false; /* read back as an ordinary store */
    s = open_store(dir, true, 0, 0);
    write_map = was;
    assert_int_equal(applied(s), 2 * RELEASE_ENTRIES);
    expect_blobs(s, "early", RELEASE_ENTRIES, 0);
    expect_blobs(s, "late", RELEASE_ENTRIES, 999);
    pc_store_close(s);
    pc_test_rm_rf(dir);
}

static void test_released_pages_keep_their_data(void **state)
{
    (void)state;
    write_map = false;
    released_pages_keep_their_data();
    write_map = true;
    released_pages_keep_their_data();
    write_map = false;
}

/* Crash consistency. A child process applies a stream of entries (several
 * tenants, bundles of varying size, some deletes) and reports each
 * committed seq on a pipe; the parent kills it with SIGKILL at a seeded
 * random moment, reopens the store and checks that it holds exactly a
 * complete prefix: every seq up to the applied one, each tenant's state
 * matching the last of its entries in that prefix, every referenced blob
 * present with the right hash, and nothing after the prefix. */

#define CRASH_TENANTS 5

static void crash_plan(uint64_t seq, char *tenant, uint64_t *version, size_t *size, int *fill)
{
    /* Deterministic: the parent recomputes what the child wrote. */
    int t = (int)(seq * 7 % CRASH_TENANTS);
    snprintf(tenant, PC_TENANT_MAX + 1, "t%d", t);
    *version = seq; /* grows per tenant because seq grows */
    *size = (seq % 9 == 0) ? 0 : 1000 + (size_t)(seq * 7919 % 200000);
    *fill = (int)seq;
}

static void crash_child(const char *dir, uint64_t from, int report_fd)
{
    pc_store_options opt = {.keep_history = false};
    pc_store *s = NULL;
    pc_err err;
    if (pc_store_open(&s, dir, &opt, &err) != PC_OK)
        _exit(2);
    for (uint64_t seq = from;; seq++) {
        char tenant[PC_TENANT_MAX + 1];
        uint64_t version;
        size_t size;
        int fill;
        crash_plan(seq, tenant, &version, &size, &fill);
        entry e;
        if (entry_make(&e, tenant, seq, version, size, fill) != PC_OK)
            _exit(3);
        int rc = entry_apply(s, &e, &err);
        if (rc == PC_OK && size > 0)
            rc = pc_store_set_live(s, tenant, version, &err);
        entry_free(&e);
        if (rc != PC_OK)
            _exit(4);
        if (write(report_fd, &seq, sizeof(seq)) != (ssize_t)sizeof(seq))
            _exit(5);
    }
}

static void check_prefix(pc_store *s, uint64_t acked)
{
    pc_err err;
    uint64_t head = applied(s);
    if (head < acked)
        fail_msg("seq %llu was committed but the store only holds %llu", (unsigned long long)acked,
                 (unsigned long long)head);
    uint64_t first = 0, last = 0;
    assert_int_equal(pc_store_log_bounds(s, &first, &last, &err), PC_OK);
    assert_int_equal(last, head);
    assert_true(head == 0 || first == 1);
    for (uint64_t seq = 1; seq <= head; seq++) {
        Popcast__LogRecord *rec = NULL;
        if (pc_store_get_log(s, seq, &rec, &err) != PC_OK)
            fail_msg("seq %llu missing below applied %llu", (unsigned long long)seq,
                     (unsigned long long)head);
        popcast__log_record__free_unpacked(rec, NULL);
    }
    Popcast__LogRecord *beyond = NULL;
    assert_int_equal(pc_store_get_log(s, head + 1, &beyond, &err), PC_E_NOTFOUND);

    /* Each tenant's expected state: its last entry at or before head. */
    for (int t = 0; t < CRASH_TENANTS; t++) {
        char name[PC_TENANT_MAX + 1];
        snprintf(name, sizeof(name), "t%d", t);
        uint64_t want_seq = 0;
        size_t want_size = 0;
        for (uint64_t seq = 1; seq <= head; seq++) {
            char tenant[PC_TENANT_MAX + 1];
            uint64_t version;
            size_t size;
            int fill;
            crash_plan(seq, tenant, &version, &size, &fill);
            if (strcmp(tenant, name) == 0) {
                want_seq = seq;
                want_size = size;
            }
        }
        pc_tenant_state st;
        int rc = pc_store_get_tenant(s, name, &st, &err);
        if (want_seq == 0) {
            assert_int_equal(rc, PC_E_NOTFOUND);
            continue;
        }
        assert_int_equal(rc, PC_OK);
        assert_int_equal(st.last_version, want_seq);
        if (want_size == 0) {
            assert_true(st.deleted);
            continue;
        }
        assert_int_equal(st.active_version, want_seq);
        assert_int_equal(st.active_seq, want_seq);
        uint8_t *blob = NULL;
        size_t len = 0;
        if (pc_store_get_blob(s, st.active_hash, &blob, &len, &err) != PC_OK)
            fail_msg("%s: active bundle missing: %s", name, err.msg);
        uint8_t h[PC_HASH_LEN];
        pc_hash(h, blob, len);
        assert_memory_equal(h, st.active_hash, PC_HASH_LEN);
        assert_int_equal(len, want_size);
        free(blob);
        /* The live version, if any, also has its bundle. */
        if (st.live_version != 0)
            assert_true(pc_store_has_blob(s, st.live_hash));
    }
}

static void test_kill_9_writer_leaves_a_complete_prefix(void **state)
{
    char dir[256];
    pc_test_tmpdir(dir, sizeof(dir), "store");
    srand(20261123);
    uint64_t total_acked = 0;
    for (int round = 0; round < 12; round++) {
        pc_store *s = open_store(dir, false, 0, 0);
        uint64_t from = applied(s) + 1;
        pc_store_close(s);

        int fds[2];
        assert_int_equal(pipe(fds), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            crash_child(dir, from, fds[1]);
        }
        close(fds[1]);
        /* Let it commit at least one entry, then kill it at a random
         * moment in the next stretch of writes. */
        uint64_t acked = 0;
        assert_int_equal(read(fds[0], &acked, sizeof(acked)), (ssize_t)sizeof(acked));
        pc_test_sleep_ms(rand() % 40);
        kill(pid, SIGKILL);
        uint64_t seq;
        while (read(fds[0], &seq, sizeof(seq)) == (ssize_t)sizeof(seq))
            acked = seq;
        close(fds[0]);
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!WIFSIGNALED(status))
            fail_msg("writer exited with status %d before the kill", WEXITSTATUS(status));

        s = open_store(dir, false, 0, 0);
        check_prefix(s, acked);
        total_acked = applied(s);
        pc_store_close(s);
    }
    assert_true(total_acked >= 12);
    print_message("kill -9 rounds: 12, entries committed in total: %llu\n",
                  (unsigned long long)total_acked);
    pc_test_rm_rf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_apply_stores_everything_together),
        cmocka_unit_test(test_refuses_out_of_order_and_stale),
        cmocka_unit_test(test_batch_is_all_or_nothing),
        cmocka_unit_test(test_blob_references),
        cmocka_unit_test(test_write_many_is_all_or_nothing),
        cmocka_unit_test(test_map_full_is_an_error),
        cmocka_unit_test_teardown(test_write_map_grows_with_its_disk, reset_write_map),
        cmocka_unit_test(test_write_map_unreservable_growth_is_an_error),
        cmocka_unit_test_teardown(test_write_map_falls_back_when_unreservable, reset_write_map),
        cmocka_unit_test(test_one_process_per_directory),
        cmocka_unit_test(test_snapshot_install),
        cmocka_unit_test(test_stage_entries),
        cmocka_unit_test(test_base_version),
        cmocka_unit_test(test_rotations_are_kept),
        cmocka_unit_test(test_idempotency_keys),
        cmocka_unit_test(test_walkers_return_callback_errors),
        cmocka_unit_test(test_copy_and_replace),
        cmocka_unit_test_teardown(test_released_pages_keep_their_data, reset_write_map),
        cmocka_unit_test(test_kill_9_writer_leaves_a_complete_prefix),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
