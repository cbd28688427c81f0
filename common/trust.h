/* trust.h - which key may sign which entry: root keys and key rotation.
 *
 * An agent trusts a set of ROOT keys from its configuration (trusted_key).
 * The controller's signing key changes only through KEY_ROTATION entries
 * in the log, so every agent switches keys at the same seq, without a
 * restart. The rules (docs/security.md, "Keys"):
 *
 *  1. Before any rotation, entries and heartbeats may be signed by any
 *     root key.
 *  2. A rotation at seq R announces next_public_key. Every entry after R
 *     (up to the next rotation) must be signed by exactly that key: the
 *     keys before it are revoked for all later seqs, whoever holds them.
 *  3. A rotation itself is accepted when signed by the key current at its
 *     seq (a planned rotation), by a root key, or by its own next key while
 *     carrying a root key's offline authorization to replace exactly the
 *     key current at its seq (the emergency revocation of a compromised or
 *     lost signing key, without the root secret on any controller).
 *  4. Heartbeats, and snapshot assertions, must be signed by the current
 *     key (the last announced one, or any root key before the first
 *     rotation); for a snapshot, "current" is as of the rotations it
 *     carries.
 *  5. An entry is checked against the key that was current at ITS seq, so
 *     old manifests (a tenant's active version in a snapshot) stay valid
 *     under the key that signed them.
 *
 * A key that was never a root and never announced is refused everywhere. */
#ifndef PC_TRUST_H
#define PC_TRUST_H

#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "err.h"
#include "popcast.pb-c.h"

typedef struct pc_trust_rotation {
    uint64_t seq;       /* the rotation entry's seq */
    pc_public_key next; /* signs every entry after seq */
} pc_trust_rotation;

typedef struct pc_trust {
    pc_keyring roots;
    pc_trust_rotation *rotations; /* ascending seq */
    size_t n, cap;
} pc_trust;

/* Starts from the root keys with no rotation. */
void pc_trust_init(pc_trust *t, const pc_keyring *roots);
void pc_trust_free(pc_trust *t);
/* dst becomes an independent copy of src (dst must be initialized or
 * zeroed; its old rotations are freed). */
int pc_trust_copy(pc_trust *dst, const pc_trust *src, pc_err *err);

/* Verifies an entry (pc_envelope_verify_entry) and then that its signer may
 * sign an entry of its kind at its seq (rules 2, 3, 5). PC_E_UNTRUSTED_KEY
 * when the signer is unknown or not allowed at that seq. */
int pc_trust_verify_entry(const pc_trust *t, const Popcast__Entry *e, size_t max_bundle,
                          Popcast__Manifest **out, pc_err *err);

/* Verifies a heartbeat under rule 4. */
int pc_trust_verify_heartbeat(const pc_trust *t, const Popcast__SignedHeartbeat *sh,
                              Popcast__Heartbeat **out, pc_err *err);
/* Verifies a snapshot assertion under rule 4: t is the chain the snapshot
 * carries, already verified from the roots. */
int pc_trust_verify_snapshot(const pc_trust *t, const Popcast__SignedSnapshotAssertion *sa,
                             Popcast__SnapshotAssertion **out, pc_err *err);

/* Records a verified, applied rotation m. Its seq must be above the last
 * rotation's. */
int pc_trust_advance(pc_trust *t, const Popcast__Manifest *m, pc_err *err);

/* Rebuilds the rotations from stored signed manifests, given in seq order
 * (what the store kept, store.h invariant 6): verifies sm as
 * pc_trust_verify_entry does, under the rotations recorded so far, checks
 * that it is a key rotation, and advances. What was verified when it was
 * applied is verified again: a damaged or forged record, or a chain that
 * does not start from these roots (the trusted keys changed), is refused
 * with the verification's code (PC_E_BAD_SIGNATURE, PC_E_UNTRUSTED_KEY,
 * PC_E_INVALID), the message naming the seq it claims ("key rotation at seq
 * N: ..."), and t unchanged. *out (if non-NULL) gets the decoded manifest
 * on success (free with popcast__manifest__free_unpacked). */
int pc_trust_advance_signed(pc_trust *t, const Popcast__SignedManifest *sm, Popcast__Manifest **out,
                            pc_err *err);

/* The key current after every recorded rotation; NULL before the first
 * (then any root key is current). */
const pc_public_key *pc_trust_current(const pc_trust *t);

/* True if b's rotations start with every rotation of a (same seqs, same
 * keys): b extends a and does not fork it. */
int pc_trust_extends(const pc_trust *a, const pc_trust *b);

#endif
