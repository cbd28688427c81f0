/* relay_log.h - a relay's copy of the recent log, in its own LMDB.
 *
 * Invariants:
 *  1. The log is contiguous: it holds every seq in [first, head] and
 *     nothing else; an append is accepted only at head + 1. An empty log
 *     has first == head + 1 (a fresh one: first 1, head 0).
 *  2. Each entry is stored as the relay received it, signed manifest and
 *     all, with its bundle complete (the caller fetched an omitted one and
 *     checked its hash): what the relay serves is byte for byte what the
 *     controller signed, and agents verify it themselves.
 *  3. Retention is bounded: after each append the oldest entries go until
 *     at most retain_entries are held and their bytes are at most
 *     retain_bytes (the newest one always stays). One transaction per
 *     append, trim included: a crash leaves the old or the new log.
 *  4. Key rotations are kept for good (seq -> signed manifest), in the same
 *     transaction as their entry, so the relay can verify what comes next
 *     after a restart however much of the log was trimmed.
 *  5. A reset (after a snapshot) empties the log and restarts it at
 *     seq + 1 with the snapshot's rotations, in one transaction.
 *
 * Layout: "log" u64 BE seq -> packed Entry; "blobs" hash -> u64 BE seq of
 * a held entry carrying that bundle; "meta": "first", "head", "bytes"
 * (u64 BE) and "rot/<seq, 20 digits>" -> packed SignedManifest.
 *
 * Thread safe: readers never block the writer (LMDB MVCC). */
#ifndef PC_RELAY_LOG_H
#define PC_RELAY_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "err.h"
#include "popcast.pb-c.h"

typedef struct pc_relay_log pc_relay_log;

typedef struct pc_relay_log_options {
    uint64_t retain_entries; /* at least 1 */
    uint64_t retain_bytes;
    uint64_t map_size; /* LMDB map: must hold retain_bytes twice over and more */
} pc_relay_log_options;

int pc_relay_log_open(pc_relay_log **out, const char *dir, const pc_relay_log_options *opt,
                      pc_err *err);
void pc_relay_log_close(pc_relay_log *l);

void pc_relay_log_bounds(pc_relay_log *l, uint64_t *first, uint64_t *head);

/* Appends e (bundle complete; m its verified manifest) at m->seq, which
 * must be head + 1 (PC_E_DUPLICATE at or below head, PC_E_SEQ_GAP above). */
int pc_relay_log_append(pc_relay_log *l, const Popcast__Entry *e, const Popcast__Manifest *m,
                        pc_err *err);

/* Empties the log, which restarts after seq, keeping the given verified
 * rotations (SignedManifests in seq order) as the only ones. */
int pc_relay_log_reset(pc_relay_log *l, uint64_t seq, Popcast__Entry *const *rotations, size_t n,
                       const uint64_t *rotation_seqs, pc_err *err);

/* The entry at seq (free with popcast__entry__free_unpacked);
 * PC_E_NOTFOUND outside [first, head]. */
int pc_relay_log_get(pc_relay_log *l, uint64_t seq, Popcast__Entry **out, pc_err *err);

/* len bytes at offset of the bundle with this hash, if a held entry has
 * it: *total its size. PC_E_NOTFOUND otherwise. */
int pc_relay_log_read_blob(pc_relay_log *l, const uint8_t hash[PC_HASH_LEN], uint64_t offset,
                           size_t len, uint8_t **out, size_t *got, uint64_t *total, pc_err *err);

/* Calls cb with every kept rotation in seq order (nonzero stops). */
int pc_relay_log_foreach_rotation(pc_relay_log *l,
                                  int (*cb)(void *arg, const Popcast__SignedManifest *sm),
                                  void *arg, pc_err *err);

#endif
