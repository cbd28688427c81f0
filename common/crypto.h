/* crypto.h - hashing, Ed25519 keys and signatures, key files (libsodium).
 *
 * Signatures are always domain separated: what is signed is
 * "<domain>\0" followed by the message, so a signature made for one kind of
 * message (a manifest) can never be presented as another (a heartbeat). */
#ifndef PC_CRYPTO_H
#define PC_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define PC_HASH_LEN       32 /* BLAKE2b-256 */
#define PC_PK_LEN         32
#define PC_SK_LEN         64
#define PC_SIG_LEN        64
#define PC_KEY_ID_LEN     8 /* first bytes of BLAKE2b-256(public key) */
#define PC_HEX_HASH_LEN   (PC_HASH_LEN * 2 + 1)
#define PC_HEX_KEY_ID_LEN (PC_KEY_ID_LEN * 2 + 1)

#define PC_DOMAIN_MANIFEST  "popcast-manifest-v1"
#define PC_DOMAIN_HEARTBEAT "popcast-heartbeat-v1"
#define PC_DOMAIN_STATUS    "popcast-status-v1"
#define PC_DOMAIN_ROTATION  "popcast-rotation-v1"
#define PC_DOMAIN_TAIL      "popcast-tail-v1"

typedef struct pc_public_key {
    uint8_t pk[PC_PK_LEN];
    uint8_t id[PC_KEY_ID_LEN];
} pc_public_key;

typedef struct pc_signing_key {
    pc_public_key pub;
    uint8_t sk[PC_SK_LEN];
} pc_signing_key;

/* Must be called once before anything else here; safe to call again. */
int pc_crypto_init(void);

void pc_hash(uint8_t out[PC_HASH_LEN], const void *data, size_t len);
void pc_hex(char *out, const uint8_t *bytes, size_t len); /* out: 2*len+1 */
/* Strict: exactly 2*len hex digits. */
int pc_unhex(uint8_t *out, size_t len, const char *hex);

int pc_keygen(pc_signing_key *key);
void pc_key_id(uint8_t id[PC_KEY_ID_LEN], const uint8_t pk[PC_PK_LEN]);
void pc_signing_key_wipe(pc_signing_key *key);

void pc_sign(const pc_signing_key *key, const char *domain, const uint8_t *msg, size_t len,
             uint8_t sig[PC_SIG_LEN]);
/* PC_OK, or PC_E_BAD_SIGNATURE. */
int pc_verify(const pc_public_key *key, const char *domain, const uint8_t *msg, size_t len,
              const uint8_t *sig, size_t sig_len);

/* Key files are one line of text: "popcast-ed25519-secret-v1 <base64>" (the
 * 64-byte libsodium secret key, file mode 0600) or
 * "popcast-ed25519-public-v1 <base64>" (32 bytes). Writing refuses to
 * overwrite an existing file. Reading refuses a secret key file that other
 * users can read. */
int pc_key_write_secret(const char *path, const pc_signing_key *key, pc_err *err);
int pc_key_write_public(const char *path, const pc_public_key *key, pc_err *err);
int pc_key_read_secret(const char *path, pc_signing_key *key, pc_err *err);
int pc_key_read_public(const char *path, pc_public_key *key, pc_err *err);
/* Parses the text of a public key file (or just its base64 part). */
int pc_key_parse_public(const char *text, pc_public_key *key, pc_err *err);
/* Writes "popcast-ed25519-public-v1 <base64>" into out (>= 80 bytes). */
void pc_key_format_public(const pc_public_key *key, char *out, size_t outlen);

/* A set of trusted public keys, found by key id. */
#define PC_KEYRING_MAX 16
typedef struct pc_keyring {
    pc_public_key keys[PC_KEYRING_MAX];
    size_t count;
} pc_keyring;

int pc_keyring_add(pc_keyring *ring, const pc_public_key *key, pc_err *err);
const pc_public_key *pc_keyring_find(const pc_keyring *ring, const uint8_t *id, size_t id_len);

#endif
