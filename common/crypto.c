/* crypto.c - libsodium wrappers and key files (see crypto.h). */
#include "crypto.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SECRET_TAG   "popcast-ed25519-secret-v1"
#define PUBLIC_TAG   "popcast-ed25519-public-v1"
#define KEY_FILE_MAX 512

int pc_crypto_init(void)
{
    return sodium_init() < 0 ? PC_E_INTERNAL : PC_OK;
}

void pc_hash(uint8_t out[PC_HASH_LEN], const void *data, size_t len)
{
    crypto_generichash(out, PC_HASH_LEN, data, len, NULL, 0);
}

void pc_hex(char *out, const uint8_t *bytes, size_t len)
{
    sodium_bin2hex(out, len * 2 + 1, bytes, len);
}

int pc_unhex(uint8_t *out, size_t len, const char *hex)
{
    size_t got = 0;
    const char *end = NULL;
    if (hex == NULL || strlen(hex) != len * 2)
        return PC_E_INVALID;
    if (sodium_hex2bin(out, len, hex, len * 2, NULL, &got, &end) != 0 || got != len || *end != '\0')
        return PC_E_INVALID;
    return PC_OK;
}

void pc_key_id(uint8_t id[PC_KEY_ID_LEN], const uint8_t pk[PC_PK_LEN])
{
    uint8_t h[PC_HASH_LEN];
    pc_hash(h, pk, PC_PK_LEN);
    memcpy(id, h, PC_KEY_ID_LEN);
}

int pc_keygen(pc_signing_key *key)
{
    if (crypto_sign_ed25519_keypair(key->pub.pk, key->sk) != 0)
        return PC_E_INTERNAL;
    pc_key_id(key->pub.id, key->pub.pk);
    return PC_OK;
}

void pc_signing_key_wipe(pc_signing_key *key)
{
    sodium_memzero(key, sizeof(*key));
}

/* Builds "<domain>\0<msg>". Messages signed here are manifests, heartbeats
 * and status reports: small, so one copy costs nothing that matters. */
static uint8_t *domain_message(const char *domain, const uint8_t *msg, size_t len, size_t *out_len)
{
    size_t dlen = strlen(domain) + 1;
    uint8_t *buf = malloc(dlen + len + 1);
    if (buf == NULL)
        return NULL;
    memcpy(buf, domain, dlen);
    if (len > 0)
        memcpy(buf + dlen, msg, len);
    *out_len = dlen + len;
    return buf;
}

void pc_sign(const pc_signing_key *key, const char *domain, const uint8_t *msg, size_t len,
             uint8_t sig[PC_SIG_LEN])
{
    size_t blen = 0;
    uint8_t *buf = domain_message(domain, msg, len, &blen);
    if (buf == NULL) {
        /* An all-zero signature never verifies: failing closed is safe. */
        memset(sig, 0, PC_SIG_LEN);
        return;
    }
    crypto_sign_ed25519_detached(sig, NULL, buf, blen, key->sk);
    free(buf);
}

int pc_verify(const pc_public_key *key, const char *domain, const uint8_t *msg, size_t len,
              const uint8_t *sig, size_t sig_len)
{
    if (sig == NULL || sig_len != PC_SIG_LEN)
        return PC_E_BAD_SIGNATURE;
    size_t blen = 0;
    uint8_t *buf = domain_message(domain, msg, len, &blen);
    if (buf == NULL)
        return PC_E_NOMEM;
    int rc = crypto_sign_ed25519_verify_detached(sig, buf, blen, key->pk);
    free(buf);
    return rc == 0 ? PC_OK : PC_E_BAD_SIGNATURE;
}

static int write_key_file(const char *path, const char *tag, const uint8_t *bytes, size_t len,
                          mode_t mode, pc_err *err)
{
    char b64[sodium_base64_ENCODED_LEN(PC_SK_LEN, sodium_base64_VARIANT_ORIGINAL)];
    char line[KEY_FILE_MAX];
    sodium_bin2base64(b64, sizeof(b64), bytes, len, sodium_base64_VARIANT_ORIGINAL);
    int n = snprintf(line, sizeof(line), "%s %s\n", tag, b64);
    sodium_memzero(b64, sizeof(b64));

    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) {
        sodium_memzero(line, sizeof(line));
        return pc_err_set(err, errno == EEXIST ? PC_E_EXISTS : PC_E_IO, "cannot create %s: %s",
                          path, strerror(errno));
    }
    /* O_CREAT's mode is filtered by the umask; the secret must be 0600. */
    int rc = fchmod(fd, mode);
    ssize_t w = rc == 0 ? write(fd, line, (size_t)n) : -1;
    int saved = errno;
    sodium_memzero(line, sizeof(line));
    if (w != n || fsync(fd) != 0) {
        close(fd);
        unlink(path);
        return pc_err_set(err, PC_E_IO, "cannot write %s: %s", path, strerror(saved));
    }
    close(fd);
    return PC_OK;
}

int pc_key_write_secret(const char *path, const pc_signing_key *key, pc_err *err)
{
    return write_key_file(path, SECRET_TAG, key->sk, PC_SK_LEN, 0600, err);
}

int pc_key_write_public(const char *path, const pc_public_key *key, pc_err *err)
{
    return write_key_file(path, PUBLIC_TAG, key->pk, PC_PK_LEN, 0644, err);
}

static int read_small_file(const char *path, char *buf, size_t cap, struct stat *st, pc_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return pc_err_set(err, errno == ENOENT ? PC_E_NOTFOUND : PC_E_IO, "cannot open %s: %s",
                          path, strerror(errno));
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
        close(fd);
        return pc_err_set(err, PC_E_INVALID, "%s is not a regular file", path);
    }
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    if (n < 0)
        return pc_err_set(err, PC_E_IO, "cannot read %s: %s", path, strerror(errno));
    if ((size_t)n >= cap - 1)
        return pc_err_set(err, PC_E_INVALID, "%s is too large to be a key file", path);
    buf[n] = '\0';
    return PC_OK;
}

/* Parses "<tag> <base64>\n?" into exactly len bytes. */
static int parse_key_text(const char *text, const char *tag, uint8_t *out, size_t len,
                          bool tag_optional)
{
    size_t tlen = strlen(tag);
    const char *b64 = text;
    if (strncmp(text, tag, tlen) == 0 && text[tlen] == ' ')
        b64 = text + tlen + 1;
    else if (!tag_optional)
        return PC_E_INVALID;
    size_t b64len = strcspn(b64, "\r\n");
    if (b64[b64len] != '\0' && strspn(b64 + b64len, "\r\n") != strlen(b64 + b64len))
        return PC_E_INVALID;
    size_t got = 0;
    const char *end = NULL;
    if (sodium_base642bin(out, len, b64, b64len, NULL, &got, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        got != len || end != b64 + b64len)
        return PC_E_INVALID;
    return PC_OK;
}

int pc_key_read_secret(const char *path, pc_signing_key *key, pc_err *err)
{
    char buf[KEY_FILE_MAX];
    struct stat st;
    int rc = read_small_file(path, buf, sizeof(buf), &st, err);
    if (rc != PC_OK)
        return rc;
    if ((st.st_mode & 077) != 0) {
        sodium_memzero(buf, sizeof(buf));
        return pc_err_set(err, PC_E_INVALID,
                          "%s is readable by other users (mode %03o); chmod 600 it", path,
                          (unsigned)(st.st_mode & 0777));
    }
    rc = parse_key_text(buf, SECRET_TAG, key->sk, PC_SK_LEN, false);
    sodium_memzero(buf, sizeof(buf));
    if (rc != PC_OK)
        return pc_err_set(err, PC_E_INVALID, "%s is not a popcast secret key file", path);
    /* The public half is the last 32 bytes of a libsodium Ed25519 secret. */
    if (crypto_sign_ed25519_sk_to_pk(key->pub.pk, key->sk) != 0)
        return pc_err_set(err, PC_E_INVALID, "%s holds an invalid key", path);
    pc_key_id(key->pub.id, key->pub.pk);
    return PC_OK;
}

int pc_key_parse_public(const char *text, pc_public_key *key, pc_err *err)
{
    if (parse_key_text(text, PUBLIC_TAG, key->pk, PC_PK_LEN, true) != PC_OK)
        return pc_err_set(err, PC_E_INVALID, "not a popcast public key");
    pc_key_id(key->id, key->pk);
    return PC_OK;
}

int pc_key_read_public(const char *path, pc_public_key *key, pc_err *err)
{
    char buf[KEY_FILE_MAX];
    struct stat st;
    int rc = read_small_file(path, buf, sizeof(buf), &st, err);
    if (rc != PC_OK)
        return rc;
    if (parse_key_text(buf, PUBLIC_TAG, key->pk, PC_PK_LEN, false) != PC_OK)
        return pc_err_set(err, PC_E_INVALID, "%s is not a popcast public key file", path);
    pc_key_id(key->id, key->pk);
    return PC_OK;
}

void pc_key_format_public(const pc_public_key *key, char *out, size_t outlen)
{
    char b64[sodium_base64_ENCODED_LEN(PC_PK_LEN, sodium_base64_VARIANT_ORIGINAL)];
    sodium_bin2base64(b64, sizeof(b64), key->pk, PC_PK_LEN, sodium_base64_VARIANT_ORIGINAL);
    snprintf(out, outlen, "%s %s", PUBLIC_TAG, b64);
}

int pc_keyring_add(pc_keyring *ring, const pc_public_key *key, pc_err *err)
{
    if (pc_keyring_find(ring, key->id, PC_KEY_ID_LEN) != NULL)
        return PC_OK;
    if (ring->count >= PC_KEYRING_MAX)
        return pc_err_set(err, PC_E_TOO_LARGE, "at most %d trusted keys", PC_KEYRING_MAX);
    ring->keys[ring->count++] = *key;
    return PC_OK;
}

const pc_public_key *pc_keyring_find(const pc_keyring *ring, const uint8_t *id, size_t id_len)
{
    if (id == NULL || id_len != PC_KEY_ID_LEN)
        return NULL;
    for (size_t i = 0; i < ring->count; i++)
        if (memcmp(ring->keys[i].id, id, PC_KEY_ID_LEN) == 0)
            return &ring->keys[i];
    return NULL;
}
