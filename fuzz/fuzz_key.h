/* fuzz_key.h - the fixed signing key the fuzz targets trust, so seeds
 * signed with it (make_seeds.c) reach the code behind signature checks. */
#ifndef PC_FUZZ_KEY_H
#define PC_FUZZ_KEY_H

#include <sodium.h>
#include <string.h>

#include "crypto.h"

static inline void pc_fuzz_key(pc_signing_key *key)
{
    unsigned char seed[crypto_sign_SEEDBYTES];
    memset(seed, 0x5a, sizeof(seed));
    crypto_sign_seed_keypair(key->pub.pk, key->sk, seed);
    pc_key_id(key->pub.id, key->pub.pk);
}

#endif
