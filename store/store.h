/* store.h - popcast's durable state in LMDB, shared by controller and agent.
 *
 * Invariants (each has a test in tests/unit/test_store.c):
 *  1. Every change is ONE write transaction: pc_store_apply stores the log
 *     record, the version record, the bundle blob, the tenant pointer and
 *     the applied seq together, or none of them. A crash at any instant
 *     leaves the complete old or the complete new state. A batch
 *     (pc_store_apply_batch, group commit) is one transaction too: all of
 *     its entries, or none.
 *  2. Entries are applied in seq order, exactly once: an entry is accepted
 *     only when its seq is applied_seq + 1.
 *  3. A tenant's versions only grow: an entry is accepted only when its
 *     version is above every version the tenant ever had (last_version),
 *     deletes included. This holds across restarts because last_version
 *     lives in the same transaction as the rest.
 *  4. Blobs are content addressed (BLAKE2b-256) and reference counted. With
 *     keep_history (controller) every version keeps its bundle; without it
 *     (agent) only the active and the live version of a tenant keep theirs.
 *  5. Every LMDB error surfaces as a pc_err, never a crash. MDB_MAP_FULL
 *     aborts the transaction, grows the map (doubling, up to map_size_max)
 *     and retries; past the maximum the caller gets PC_E_STORE "store is
 *     full" and nothing changes.
 *  6. Key rotations are kept for good: applying a KEY_ROTATION entry (or a
 *     snapshot that carries rotations) also stores it under
 *     "rotation/<seq, 20 digits>" in meta, in the same transaction, so the
 *     chain of signing keys survives log truncation, restarts and snapshots.
 *  7. An idempotency key names the entry it made for as long as it is
 *     kept: pc_store_apply_batch stores an item's key record in the same
 *     transaction as the entry, under "idem/<tenant>/<key>" in meta (with
 *     "idemt/<created ms, 20 digits>/<tenant>/<key>" as its time index).
 *     Records older than PC_STORE_IDEMPOTENCY_RETAIN_MS before the newest
 *     stored one are dropped, a few per store, by the same transactions:
 *     every replica applies the same entries, so every replica keeps the
 *     same keys.
 *  8. A STAGE entry (a deployment's next stage) names a version the
 *     tenant already has and carries no content: it is exempt from
 *     invariant 3, changes no version, blob or live pointer, and only
 *     records its seq as the tenant's stage_seq while that version is
 *     still the active one (any other change resets stage_seq to 0). One
 *     for a version above last_version is refused (PC_E_INVALID); one
 *     for an older version is logged and does nothing else. Snapshot
 *     items of this kind follow the same rule. A deploy or rollback whose
 *     target does not name everyone records the version the agents it
 *     does not name keep serving (base_seq: the previous active version
 *     if that one was everywhere, else its own base); one for everyone,
 *     a STAGE for everyone, or a delete clears it.
 *
 * Layout (named databases):
 *   meta     string key -> bytes      "applied_seq" (u64 big-endian), ids,
 *                                     "rotation/<seq>" -> LogRecord,
 *                                     "idem/<tenant>/<key>" -> IdempotencyRecord
 *   log      u64 BE seq -> LogRecord  (the signed manifest, exact bytes)
 *   versions tenant "\0" u64 BE version -> u64 BE seq
 *   tenants  tenant -> TenantRecord
 *   blobs    hash(32) -> bundle bytes
 *   blobrefs hash(32) -> u64 BE reference count
 *
 * Walks (pc_store_foreach_tenant, pc_store_foreach_version,
 * pc_store_meta_foreach, pc_store_foreach_rotation, pc_store_snapshot_read)
 * read what they visit in one read transaction, end it, then call cb for
 * each item, so a callback may use the store. A callback returns 0 to go
 * on; any other value stops the walk at once (no further call) and the
 * walker returns that value unchanged, whatever its sign: a caller must
 * treat every non-zero result as "the walk did not complete". err is
 * cleared when a walk starts; after a stop it holds the callback's own
 * message if the callback filled the same pc_err, else one saying the
 * callback stopped the walk.
 *
 * Thread safety: a pc_store may be used from any number of threads. Reads
 * never block on the writer (LMDB MVCC); writers are serialized. */
#ifndef PC_STORE_H
#define PC_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "err.h"
#include "names.h"
#include "popcast.pb-c.h"

/* The named LMDB databases of a store (mdb_env_set_maxdbs): every opener
 * of a store's file (store.c, backup.c) sets the same. */
#define PC_STORE_MAX_DBS 8

typedef struct pc_store pc_store;

typedef struct pc_store_options {
    uint64_t map_size;     /* initial map size in bytes (0: 64 MiB) */
    uint64_t map_size_max; /* the map never grows past this (0: 64 GiB) */
    bool keep_history;     /* controller: keep every version's blob */
    bool no_sync;          /* benchmarks only: MDB_NOSYNC (not crash safe) */
    /* MDB_WRITEMAP: a write transaction changes the file's pages in the map
     * instead of malloc'd copies. LMDB keeps every copy it ever made for
     * reuse until the store closes, so one big transaction (a snapshot of
     * 10,000 tenants) otherwise pins megabytes and fragments the heap for
     * good. The price: a stray write into the map would reach the file, and
     * the file takes the map's size on disk, reserved at open and at every
     * growth (posix_fallocate) so that a full disk is an error there, never
     * a SIGBUS on a page written later. A store whose map cannot be
     * reserved at open opens without it (pc_store_stats.write_map says).
     * Agents use it (their store is a replica the controllers can always
     * send again); controllers do not. */
    bool write_map;
} pc_store_options;

/* Opens (creating if needed) the store in directory dir, which must exist.
 * The directory holds LMDB's data.mdb and lock.mdb. */
int pc_store_open(pc_store **out, const char *dir, const pc_store_options *opt, pc_err *err);
void pc_store_close(pc_store *s);

/* Applies one verified entry in one write transaction (see invariants).
 * sm is the signed manifest exactly as received (it is stored as is), m
 * its decoded form. bundle must be given, with matching hash, for DEPLOY
 * and ROLLBACK, and NULL for other kinds (the caller has verified it; the
 * store re-checks only the length and hash, cheaply guarding invariant 4).
 * Errors: PC_E_DUPLICATE (seq <= applied), PC_E_SEQ_GAP (seq > applied+1),
 * PC_E_STALE_VERSION (version <= tenant's last_version), PC_E_INVALID,
 * PC_E_STORE. Nothing changes on error. */
int pc_store_apply(pc_store *s, const Popcast__SignedManifest *sm, const Popcast__Manifest *m,
                   const uint8_t *bundle, size_t bundle_len, pc_err *err);

/* One entry of a snapshot or of a batch, verified by the caller. */
typedef struct pc_store_item {
    const Popcast__SignedManifest *sm;
    const Popcast__Manifest *m;
    const uint8_t *bundle; /* content kinds only */
    size_t bundle_len;
    /* Batches only, may be NULL: the idempotency key of the request that
     * made this entry (invariant 7); its tenant and seq must be the
     * entry's. */
    const Popcast__IdempotencyRecord *idempotency;
    /* Snapshots only (agent): when the item is stored, it becomes the
     * tenant's live version in the same transaction (the version a
     * deployment's later item holds back from this agent keeps its blob). */
    bool live;
} pc_store_item;

/* Applies n entries at consecutive seqs (the first following the applied
 * seq) in ONE write transaction, each checked exactly as pc_store_apply
 * checks it, after the ones before it: all are applied, or, on the first
 * error (pc_store_apply's codes), none. Group commit: one fsync for the
 * lot. */
int pc_store_apply_batch(pc_store *s, const pc_store_item *items, size_t n, pc_err *err);

/* How long an idempotency key is kept (invariant 7): a client may retry
 * a write for this long after it was made. */
#define PC_STORE_IDEMPOTENCY_RETAIN_MS (24ll * 3600 * 1000)

/* The record of tenant's idempotency key (free it with
 * popcast__idempotency_record__free_unpacked). PC_E_NOTFOUND if no kept
 * record has that key; PC_E_INVALID for a tenant or key that is not
 * valid (names.h). */
int pc_store_get_idempotency(pc_store *s, const char *tenant, const char *key,
                             Popcast__IdempotencyRecord **out, pc_err *err);

/* Installs a snapshot (each tenant's latest entry as of seq) in ONE write
 * transaction: items whose version is above the tenant's last_version are
 * stored as pc_store_apply would (invariants 3 and 4 hold; older ones are
 * skipped), then the applied seq becomes seq. applied[i] (if non-NULL)
 * tells which items changed their tenant. PC_E_DUPLICATE if seq is not
 * above the applied seq. The log below seq has holes afterwards;
 * pc_store_log_bounds reports the first whole seq. */
int pc_store_install_snapshot(pc_store *s, uint64_t seq, const pc_store_item *items, size_t n,
                              bool *applied, pc_err *err);

/* Agent: records that tenant's version is now live (serving), in one
 * transaction, moving the "live" blob reference. version 0 clears it (the
 * tenant was deleted). PC_E_NOTFOUND if the tenant is unknown; PC_E_INVALID
 * if version is not the tenant's active version (or 0). */
int pc_store_set_live(pc_store *s, const char *tenant, uint64_t version, pc_err *err);

/* One write of pc_store_write_many: either tenant's live version (as
 * pc_store_set_live) or a meta record (as pc_store_meta_put; its key
 * comes from registry.h). */
typedef struct pc_store_write {
    const char *tenant; /* non-NULL: set tenant's live version */
    uint64_t live_version;
    const char *meta_key; /* non-NULL: put a meta record */
    const void *meta_val;
    size_t meta_len;
    bool meta_delete; /* with meta_key: remove the record instead (absent is fine) */
} pc_store_write;

/* Many such writes in ONE transaction (one flush to disk instead of one
 * each): all take effect, or none (the first failure's error). */
int pc_store_write_many(pc_store *s, const pc_store_write *w, size_t n, pc_err *err);

/* The seq of the last applied entry (0 for an empty store). */
int pc_store_applied_seq(pc_store *s, uint64_t *out, pc_err *err);

typedef struct pc_tenant_state {
    char tenant[PC_TENANT_MAX + 1];
    uint64_t active_version; /* 0: none (deleted, or only ever deleted) */
    uint64_t active_seq;
    uint8_t active_hash[PC_HASH_LEN];
    uint64_t last_version; /* highest version ever applied, never decreases */
    bool deleted;
    uint64_t live_version; /* agent only: 0 when nothing is live */
    uint64_t live_seq;
    uint8_t live_hash[PC_HASH_LEN];
    uint64_t stage_seq; /* the active version's last STAGE (0: none) */
    /* The active version is not targeted at every agent (its entry's or
     * its last STAGE's target); base_seq: the entry of the version the
     * others serve (0: none). Invariant 8. */
    bool active_targeted;
    uint64_t base_seq;
} pc_tenant_state;

/* Reads, in one transaction, the applied seq, each tenant's state and its
 * latest entry (the seq of its last version), then walks them (see
 * "Walks"). */
int pc_store_snapshot_read(pc_store *s, uint64_t *seq,
                           int (*cb)(void *arg, const pc_tenant_state *t, uint64_t latest_seq),
                           void *arg, pc_err *err);

/* PC_E_NOTFOUND if the tenant never had an entry. */
int pc_store_get_tenant(pc_store *s, const char *tenant, pc_tenant_state *out, pc_err *err);

/* Walks every tenant in name order (see "Walks"). */
int pc_store_foreach_tenant(pc_store *s, int (*cb)(void *arg, const pc_tenant_state *t), void *arg,
                            pc_err *err);

/* The seq of tenant's version, PC_E_NOTFOUND if there is none. */
int pc_store_version_seq(pc_store *s, const char *tenant, uint64_t version, uint64_t *seq,
                         pc_err *err);

/* Walks every version of tenant in ascending order (see "Walks"). */
int pc_store_foreach_version(pc_store *s, const char *tenant,
                             int (*cb)(void *arg, uint64_t version, uint64_t seq), void *arg,
                             pc_err *err);

/* The stored signed manifest of seq (exact bytes as applied). *out is
 * malloc'd by protobuf-c: free with popcast__log_record__free_unpacked.
 * PC_E_NOTFOUND if seq is not in the retained log. */
int pc_store_get_log(pc_store *s, uint64_t seq, Popcast__LogRecord **out, pc_err *err);
/* The decoded manifest of seq (free with popcast__manifest__free_unpacked),
 * for readers that need its fields, not its signed bytes. PC_E_NOTFOUND as
 * above; PC_E_STORE if the stored bytes do not decode. */
int pc_store_get_manifest(pc_store *s, uint64_t seq, Popcast__Manifest **out, pc_err *err);

/* First and last seq held in the log (both 0 when it is empty); after a
 * snapshot, first is the first seq after the snapshot. */
int pc_store_log_bounds(pc_store *s, uint64_t *first, uint64_t *last, pc_err *err);

/* A copy of the blob with that hash, malloc'd. PC_E_NOTFOUND if absent. */
int pc_store_get_blob(pc_store *s, const uint8_t hash[PC_HASH_LEN], uint8_t **out, size_t *len,
                      pc_err *err);
/* Up to cap bytes of the blob from offset (for chunked transfer); *total
 * is the blob's size. */
int pc_store_read_blob(pc_store *s, const uint8_t hash[PC_HASH_LEN], uint64_t offset, uint8_t *buf,
                       size_t cap, size_t *got, uint64_t *total, pc_err *err);
bool pc_store_has_blob(pc_store *s, const uint8_t hash[PC_HASH_LEN]);

/* Small values under string keys (node ids, agent ids, ...). _get copies at
 * most cap bytes into buf, sets *len to the value's full length, and
 * returns PC_E_NOTFOUND if the key is absent. */
int pc_store_meta_get(pc_store *s, const char *key, void *buf, size_t cap, size_t *len,
                      pc_err *err);
int pc_store_meta_put(pc_store *s, const char *key, const void *val, size_t len, pc_err *err);
/* Walks every meta key starting with prefix, in key order (see "Walks"). */
int pc_store_meta_foreach(pc_store *s, const char *prefix,
                          int (*cb)(void *arg, const char *key, const uint8_t *val, size_t len),
                          void *arg, pc_err *err);

/* Walks every stored KEY_ROTATION entry's signed manifest, in seq order
 * (invariant 6; see "Walks"). The store does not verify them: the records
 * are what was applied, and a reader that rebuilds a key chain from them
 * verifies them again (pc_trust_advance_signed). A record that does not
 * decode stops the walk with PC_E_STORE. */
#define PC_STORE_ROTATION_PREFIX "rotation/"
int pc_store_foreach_rotation(pc_store *s, int (*cb)(void *arg, const Popcast__SignedManifest *sm),
                              void *arg, pc_err *err);

/* The applied seq of a store file (data.mdb alone, e.g. a backup), read
 * without changing it: opened read only, with no lock file. PC_E_STORE if
 * it is not an LMDB file holding a popcast store. */
int pc_store_file_applied_seq(const char *path, uint64_t *seq, pc_err *err);

/* Writes a compacted copy of the whole store (a consistent snapshot) to
 * path: what a raft snapshot carries. */
int pc_store_copy(pc_store *s, const char *path, pc_err *err);
/* Replaces the store's contents with the store file at path (made by
 * pc_store_copy), which is moved into place. Waits for every transaction
 * of this process to end and blocks new ones meanwhile. */
int pc_store_replace(pc_store *s, const char *path, pc_err *err);

/* Takes this process's page-table entries for the store's map away
 * (madvise MADV_DONTNEED on a shared file mapping): the pages stay in the
 * kernel's page cache, written ones included (and reach the disk as
 * before), and the next access maps them again. So the process's RSS
 * stops counting store pages it touched once, e.g. while applying a
 * burst, and the kernel reclaims them like any other file cache. Safe
 * while transactions run: the map is never moved meanwhile. Returns the
 * bytes the map spans (0 when there is nothing to release); errors
 * (madvise refused) are not worth a caller's attention and return 0. */
uint64_t pc_store_release_pages(pc_store *s);

typedef struct pc_store_stats {
    uint64_t map_size;   /* current map size in bytes */
    uint64_t used_bytes; /* pages in use * page size */
    uint64_t entries_log, tenants, blobs;
    uint64_t map_grows; /* times MDB_MAP_FULL grew the map since open */
    bool write_map;     /* written through the map: asked, and possible at open */
} pc_store_stats;
int pc_store_stats_get(pc_store *s, pc_store_stats *out, pc_err *err);

#endif
