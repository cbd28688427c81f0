/* status_digest.h - the digest of an agent's tenant table that delta
 * status reports carry (docs/protocol.md "Delta reports").
 *
 * A tenant's hash is BLAKE2b-128 of its TenantStatus as protobuf-c packs
 * it; the table's digest is the XOR of its tenants' hashes. XOR makes the
 * digest independent of order and lets a receiver update it per changed
 * tenant (remove the old hash, add the new) instead of rehashing the
 * table. It detects drift between two honest parties (a lost or misapplied
 * delta), not an adversary: reports are authenticated by their signature.
 * Both sides must pack the same fields the same way; a receiver whose
 * packing differs (a newer agent's fields it does not know) sees every
 * digest mismatch and keeps asking for whole reports, which is slower but
 * never wrong. */
#ifndef PC_STATUS_DIGEST_H
#define PC_STATUS_DIGEST_H

#include <stdbool.h>
#include <stdint.h>

#include "popcast.pb-c.h"

#define PC_STATUS_DIGEST_LEN 16

typedef struct pc_status_digest {
    uint8_t b[PC_STATUS_DIGEST_LEN];
} pc_status_digest;

/* The hash of one tenant's status; false when out of memory. */
bool pc_status_digest_tenant(pc_status_digest *out, const Popcast__TenantStatus *t);
/* acc ^= h: adds a tenant's hash to a digest, or takes it out again. */
void pc_status_digest_xor(pc_status_digest *acc, const pc_status_digest *h);
bool pc_status_digest_equal(const pc_status_digest *a, const uint8_t *b, size_t len);

#endif
