/* signer.h - the controller's signing keys, and which one signs now.
 *
 * A controller holds one or more secret keys (the signing_key option,
 * repeatable). Which of them signs is decided by the replicated log, not by
 * the configuration: the key announced by the last KEY_ROTATION entry in
 * the store, or, before any rotation, the first configured key that is a
 * root key (agents accept nothing else before a rotation). So every
 * controller of a cluster signs with the same key after the same seq, and a
 * rotation takes effect everywhere at once (common/trust.h gives the rules
 * agents apply).
 *
 * Root keys are what agents trust from their configuration (trusted_key):
 * the root_key option, by default the public part of the first signing
 * key. A rotation is normally signed by the current key; an emergency
 * rotation (the current key is compromised or lost) is signed by a root
 * key that the operator adds to signing_key for that one call.
 *
 * The stored rotations are judged as agents judge them (common/trust.h),
 * from these root keys, each time they are read: a rotation that does not
 * verify (a damaged or forged record, or root_key is not what the agents
 * trust) is an error for every call below that reads them, naming its seq.
 * pc_signer_new fails then, so such a controller refuses to start; if such
 * a rotation arrives later, nothing is signed (no key is handed out) until
 * it is repaired: the controller never signs with a key agents refuse, nor
 * with one a broken record announced.
 *
 * Safe from any thread: the held keys never change after _new and the
 * rotations are read from the store. */
#ifndef PC_SIGNER_H
#define PC_SIGNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "err.h"
#include "store.h"

typedef struct pc_signer pc_signer;

/* keys[0..n) are copied (and wiped on free); roots NULL or empty means
 * {keys[0]'s public key}. n must be >= 1. Fails with the verification's
 * error (PC_E_BAD_SIGNATURE, PC_E_UNTRUSTED_KEY, PC_E_INVALID, PC_E_STORE)
 * if the rotations already in the store do not verify from the roots. */
int pc_signer_new(pc_signer **out, pc_store *store, const pc_signing_key *keys, size_t n,
                  const pc_keyring *roots, pc_err *err);
void pc_signer_free(pc_signer *s);

/* The public key that must sign now, and the seq of the rotation that
 * announced it (0: no rotation yet: the first held root key).
 * PC_E_UNAVAILABLE before any rotation when no held key is a root (roots
 * kept offline: the first rotation needs a root's authorization);
 * *since_seq is set even then. The error of the chain when a stored
 * rotation does not verify (*since_seq untouched then). */
int pc_signer_current_public(pc_signer *s, pc_public_key *out, uint64_t *since_seq, pc_err *err);

/* The secret key that must sign now. PC_E_UNAVAILABLE, naming the key, if
 * this controller does not hold it (add it to signing_key). */
int pc_signer_current(pc_signer *s, const pc_signing_key **out, pc_err *err);

/* A held secret key whose public key is pk, or NULL. */
const pc_signing_key *pc_signer_held(pc_signer *s, const uint8_t pk[PC_PK_LEN]);
bool pc_signer_is_root(pc_signer *s, const uint8_t pk[PC_PK_LEN]);
bool pc_signer_is_root_id(pc_signer *s, const uint8_t id[PC_KEY_ID_LEN]);
const pc_keyring *pc_signer_roots(pc_signer *s);

/* Calls cb for each rotation in seq order, after verifying it: its seq,
 * the announced key, the key that signed it and when it was made (cb NULL:
 * only verifies). Stops at the first rotation that does not verify, with
 * its error; a non-zero value from cb stops the walk and is returned (as
 * every store walk, store.h). */
int pc_signer_foreach_rotation(pc_signer *s,
                               int (*cb)(void *arg, uint64_t seq, const pc_public_key *next,
                                         const uint8_t signer_id[PC_KEY_ID_LEN],
                                         int64_t created_unix_ms),
                               void *arg, pc_err *err);

#endif
