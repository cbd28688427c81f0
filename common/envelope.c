/* envelope.c - manifest and heartbeat signatures (see envelope.h). */
#include "envelope.h"

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "byteorder.h"
#include "names.h"
#include "target.h"

const char *pc_entry_kind_name(Popcast__EntryKind k)
{
    switch (k) {
    case POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY: return "deploy";
    case POPCAST__ENTRY_KIND__ENTRY_KIND_ROLLBACK: return "rollback";
    case POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE: return "delete";
    case POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION: return "key_rotation";
    case POPCAST__ENTRY_KIND__ENTRY_KIND_STAGE: return "stage";
    default: return "unknown";
    }
}

int pc_manifest_has_content(const Popcast__Manifest *m)
{
    return m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY ||
           m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_ROLLBACK;
}

/* Packs msg with its key_id field set to key's id, signs the bytes under
 * domain, and hands out malloc'd bytes, signature and key id. msg's key_id
 * is cleared again: it must not keep pointing at key memory the caller may
 * wipe. */
static int sign_message(const pc_signing_key *key, const char *domain, ProtobufCMessage *msg,
                        ProtobufCBinaryData *msg_key_id, ProtobufCBinaryData *bytes_out,
                        ProtobufCBinaryData *sig_out, ProtobufCBinaryData *kid_out, pc_err *err)
{
    msg_key_id->data = (uint8_t *)key->pub.id;
    msg_key_id->len = PC_KEY_ID_LEN;
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *bytes = malloc(len ? len : 1);
    uint8_t *sig = malloc(PC_SIG_LEN);
    uint8_t *kid = malloc(PC_KEY_ID_LEN);
    if (bytes != NULL)
        protobuf_c_message_pack(msg, bytes);
    msg_key_id->data = NULL;
    msg_key_id->len = 0;
    if (bytes == NULL || sig == NULL || kid == NULL) {
        free(bytes);
        free(sig);
        free(kid);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    pc_sign(key, domain, bytes, len, sig);
    memcpy(kid, key->pub.id, PC_KEY_ID_LEN);
    *bytes_out = (ProtobufCBinaryData){len, bytes};
    *sig_out = (ProtobufCBinaryData){PC_SIG_LEN, sig};
    *kid_out = (ProtobufCBinaryData){PC_KEY_ID_LEN, kid};
    return PC_OK;
}

/* Finds the key by the unsigned hint, verifies the signature over the bytes
 * as received, and only then decodes them as desc; the decoded message's
 * own key id (msg_key_id_of) must equal the key's. */
static int verify_message(const pc_keyring *ring, const char *domain, const char *what,
                          const ProtobufCBinaryData *bytes, const ProtobufCBinaryData *sig,
                          const ProtobufCBinaryData *kid, const ProtobufCMessageDescriptor *desc,
                          const ProtobufCBinaryData *(*msg_key_id_of)(const ProtobufCMessage *),
                          ProtobufCMessage **out, pc_err *err)
{
    *out = NULL;
    const pc_public_key *key = pc_keyring_find(ring, kid->data, kid->len);
    if (key == NULL)
        return pc_err_set(err, PC_E_UNTRUSTED_KEY, "%s signed by an untrusted key", what);
    if (pc_verify(key, domain, bytes->data, bytes->len, sig->data, sig->len) != PC_OK)
        return pc_err_set(err, PC_E_BAD_SIGNATURE, "%s signature does not verify", what);
    ProtobufCMessage *msg = protobuf_c_message_unpack(desc, NULL, bytes->len, bytes->data);
    if (msg == NULL)
        return pc_err_set(err, PC_E_INVALID, "signed %s bytes do not decode", what);
    const ProtobufCBinaryData *inner = msg_key_id_of(msg);
    if (inner->len != PC_KEY_ID_LEN || memcmp(inner->data, key->id, PC_KEY_ID_LEN) != 0) {
        protobuf_c_message_free_unpacked(msg, NULL);
        return pc_err_set(err, PC_E_BAD_SIGNATURE, "%s key id differs from its envelope", what);
    }
    *out = msg;
    return PC_OK;
}

static const ProtobufCBinaryData *manifest_key_id(const ProtobufCMessage *msg)
{
    return &((const Popcast__Manifest *)msg)->key_id;
}

static const ProtobufCBinaryData *heartbeat_key_id(const ProtobufCMessage *msg)
{
    return &((const Popcast__Heartbeat *)msg)->key_id;
}

int pc_envelope_sign_manifest(const pc_signing_key *key, Popcast__Manifest *m,
                              Popcast__SignedManifest *out, pc_err *err)
{
    popcast__signed_manifest__init(out);
    return sign_message(key, PC_DOMAIN_MANIFEST, &m->base, &m->key_id, &out->manifest,
                        &out->signature, &out->key_id, err);
}

void pc_envelope_signed_clear(Popcast__SignedManifest *sm)
{
    free(sm->manifest.data);
    free(sm->signature.data);
    free(sm->key_id.data);
    popcast__signed_manifest__init(sm);
}

static int check_manifest_fields(const Popcast__Manifest *m, pc_err *err)
{
    switch (m->kind) {
    case POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY:
    case POPCAST__ENTRY_KIND__ENTRY_KIND_ROLLBACK:
    case POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE:
    case POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION:
    case POPCAST__ENTRY_KIND__ENTRY_KIND_STAGE: break;
    default: return pc_err_set(err, PC_E_INVALID, "manifest has unknown kind %d", (int)m->kind);
    }
    if (m->seq == 0)
        return pc_err_set(err, PC_E_INVALID, "manifest seq must be >= 1");
    if (m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION) {
        if (m->next_public_key.len != PC_PK_LEN)
            return pc_err_set(err, PC_E_INVALID, "key rotation without a %d-byte next key",
                              PC_PK_LEN);
        return PC_OK;
    }
    if (!pc_tenant_name_valid(m->tenant))
        return pc_err_set(err, PC_E_INVALID, "manifest tenant name is not valid");
    if (m->version == 0)
        return pc_err_set(err, PC_E_INVALID, "manifest version must be >= 1");
    if (pc_manifest_has_content(m)) {
        if (m->bundle_hash.len != PC_HASH_LEN)
            return pc_err_set(err, PC_E_INVALID, "manifest bundle hash is not 32 bytes");
        if (!pc_runtime_name_valid(m->runtime))
            return pc_err_set(err, PC_E_INVALID, "manifest runtime name is not valid");
        if (!pc_bundle_path_valid(m->entrypoint))
            return pc_err_set(err, PC_E_INVALID, "manifest entrypoint is not valid");
    }
    if (m->target != NULL && m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE)
        return pc_err_set(err, PC_E_INVALID, "a delete has no target: it applies everywhere");
    return pc_target_check(m->target, err);
}

int pc_envelope_verify_manifest(const pc_keyring *ring, const Popcast__SignedManifest *sm,
                                Popcast__Manifest **out, pc_err *err)
{
    *out = NULL;
    if (sm == NULL || sm->manifest.len == 0)
        return pc_err_set(err, PC_E_INVALID, "entry has no manifest");
    ProtobufCMessage *msg = NULL;
    int rc =
        verify_message(ring, PC_DOMAIN_MANIFEST, "manifest", &sm->manifest, &sm->signature,
                       &sm->key_id, &popcast__manifest__descriptor, manifest_key_id, &msg, err);
    if (rc != PC_OK)
        return rc;
    Popcast__Manifest *m = (Popcast__Manifest *)msg;
    if ((rc = check_manifest_fields(m, err)) != PC_OK) {
        popcast__manifest__free_unpacked(m, NULL);
        return rc;
    }
    *out = m;
    return PC_OK;
}

int pc_envelope_check_bundle(const Popcast__Manifest *m, const uint8_t *bundle, size_t len,
                             pc_err *err)
{
    if (len != m->bundle_size)
        return pc_err_set(err, PC_E_HASH_MISMATCH, "bundle is %zu bytes, manifest says %llu", len,
                          (unsigned long long)m->bundle_size);
    uint8_t h[PC_HASH_LEN];
    pc_hash(h, bundle, len);
    if (m->bundle_hash.len != PC_HASH_LEN || memcmp(h, m->bundle_hash.data, PC_HASH_LEN) != 0)
        return pc_err_set(err, PC_E_HASH_MISMATCH, "bundle hash does not match its manifest");
    return PC_OK;
}

int pc_envelope_verify_entry(const pc_keyring *ring, const Popcast__Entry *e, size_t max_bundle,
                             Popcast__Manifest **out, pc_err *err)
{
    *out = NULL;
    if (e == NULL)
        return pc_err_set(err, PC_E_INVALID, "empty entry");
    Popcast__Manifest *m = NULL;
    int rc = pc_envelope_verify_manifest(ring, e->signed_, &m, err);
    if (rc != PC_OK)
        return rc;
    if (pc_manifest_has_content(m)) {
        if (m->bundle_size > max_bundle) {
            rc = pc_err_set(err, PC_E_TOO_LARGE, "bundle of %llu bytes exceeds the limit %zu",
                            (unsigned long long)m->bundle_size, max_bundle);
        } else if (!e->bundle_omitted) {
            rc = pc_envelope_check_bundle(m, e->bundle.data, e->bundle.len, err);
        }
    } else if (e->bundle.len != 0) {
        rc = pc_err_set(err, PC_E_INVALID, "entry of this kind carries no bundle");
    }
    if (rc != PC_OK) {
        popcast__manifest__free_unpacked(m, NULL);
        return rc;
    }
    *out = m;
    return PC_OK;
}

int pc_envelope_sign_heartbeat(const pc_signing_key *key, Popcast__Heartbeat *hb,
                               Popcast__SignedHeartbeat *out, pc_err *err)
{
    popcast__signed_heartbeat__init(out);
    return sign_message(key, PC_DOMAIN_HEARTBEAT, &hb->base, &hb->key_id, &out->heartbeat,
                        &out->signature, &out->key_id, err);
}

int pc_envelope_verify_heartbeat(const pc_keyring *ring, const Popcast__SignedHeartbeat *sh,
                                 Popcast__Heartbeat **out, pc_err *err)
{
    *out = NULL;
    if (sh == NULL || sh->heartbeat.len == 0)
        return pc_err_set(err, PC_E_INVALID, "empty heartbeat");
    ProtobufCMessage *msg = NULL;
    int rc =
        verify_message(ring, PC_DOMAIN_HEARTBEAT, "heartbeat", &sh->heartbeat, &sh->signature,
                       &sh->key_id, &popcast__heartbeat__descriptor, heartbeat_key_id, &msg, err);
    *out = (Popcast__Heartbeat *)msg;
    return rc;
}

static const ProtobufCBinaryData *snapshot_key_id(const ProtobufCMessage *msg)
{
    return &((const Popcast__SnapshotAssertion *)msg)->key_id;
}

int pc_envelope_sign_snapshot(const pc_signing_key *key, Popcast__SnapshotAssertion *a,
                              Popcast__SignedSnapshotAssertion *out, pc_err *err)
{
    popcast__signed_snapshot_assertion__init(out);
    return sign_message(key, PC_DOMAIN_SNAPSHOT, &a->base, &a->key_id, &out->assertion,
                        &out->signature, &out->key_id, err);
}

int pc_envelope_verify_snapshot(const pc_keyring *ring, const Popcast__SignedSnapshotAssertion *sa,
                                Popcast__SnapshotAssertion **out, pc_err *err)
{
    *out = NULL;
    if (sa == NULL || sa->assertion.len == 0)
        return pc_err_set(err, PC_E_INVALID, "snapshot carries no signed assertion");
    ProtobufCMessage *msg = NULL;
    int rc = verify_message(ring, PC_DOMAIN_SNAPSHOT, "snapshot assertion", &sa->assertion,
                            &sa->signature, &sa->key_id, &popcast__snapshot_assertion__descriptor,
                            snapshot_key_id, &msg, err);
    if (rc != PC_OK)
        return rc;
    Popcast__SnapshotAssertion *a = (Popcast__SnapshotAssertion *)msg;
    if (a->seq == 0 || a->head_seq < a->seq || a->rotations_digest.len != PC_HASH_LEN ||
        a->tenants_digest.len != PC_HASH_LEN) {
        popcast__snapshot_assertion__free_unpacked(a, NULL);
        return pc_err_set(err, PC_E_INVALID, "snapshot assertion fields are malformed");
    }
    *out = a;
    return PC_OK;
}

void pc_envelope_snapshot_digest(Popcast__Entry *const *entries, size_t n, uint8_t out[PC_HASH_LEN])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, PC_HASH_LEN);
    for (size_t i = 0; i < n; i++) {
        const Popcast__SignedManifest *sm = entries[i] != NULL ? entries[i]->signed_ : NULL;
        size_t len = sm != NULL ? sm->manifest.len : 0;
        uint8_t be[8];
        pc_be64_put(be, (uint64_t)len);
        crypto_generichash_update(&st, be, sizeof(be));
        if (len > 0)
            crypto_generichash_update(&st, sm->manifest.data, len);
    }
    crypto_generichash_final(&st, out, PC_HASH_LEN);
}

static const ProtobufCBinaryData *authorization_key_id(const ProtobufCMessage *msg)
{
    return &((const Popcast__RotationAuthorization *)msg)->key_id;
}

int pc_envelope_sign_authorization(const pc_signing_key *root, Popcast__RotationAuthorization *a,
                                   Popcast__SignedRotationAuthorization *out, pc_err *err)
{
    popcast__signed_rotation_authorization__init(out);
    return sign_message(root, PC_DOMAIN_ROTATION, &a->base, &a->key_id, &out->authorization,
                        &out->signature, &out->key_id, err);
}

int pc_envelope_verify_authorization(const pc_keyring *ring,
                                     const Popcast__SignedRotationAuthorization *sa,
                                     Popcast__RotationAuthorization **out, pc_err *err)
{
    *out = NULL;
    if (sa == NULL || sa->authorization.len == 0)
        return pc_err_set(err, PC_E_INVALID, "empty rotation authorization");
    ProtobufCMessage *msg = NULL;
    int rc = verify_message(
        ring, PC_DOMAIN_ROTATION, "rotation authorization", &sa->authorization, &sa->signature,
        &sa->key_id, &popcast__rotation_authorization__descriptor, authorization_key_id, &msg, err);
    if (rc != PC_OK)
        return rc;
    Popcast__RotationAuthorization *a = (Popcast__RotationAuthorization *)msg;
    if (a->next_public_key.len != PC_PK_LEN || a->replaces_key_id.len != PC_KEY_ID_LEN) {
        popcast__rotation_authorization__free_unpacked(a, NULL);
        return pc_err_set(err, PC_E_INVALID, "rotation authorization fields are malformed");
    }
    *out = a;
    return PC_OK;
}

#define AUTH_TEXT_PREFIX "popcast-rotation-auth-v1 "
#define AUTH_TEXT_MAX    4096

int pc_authorization_format(const Popcast__SignedRotationAuthorization *sa, char **out, pc_err *err)
{
    *out = NULL;
    size_t len = popcast__signed_rotation_authorization__get_packed_size(sa);
    uint8_t *bin = malloc(len ? len : 1);
    size_t b64 = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
    char *text = malloc(sizeof(AUTH_TEXT_PREFIX) + b64);
    if (bin == NULL || text == NULL) {
        free(bin);
        free(text);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    popcast__signed_rotation_authorization__pack(sa, bin);
    memcpy(text, AUTH_TEXT_PREFIX, sizeof(AUTH_TEXT_PREFIX) - 1);
    sodium_bin2base64(text + sizeof(AUTH_TEXT_PREFIX) - 1, b64, bin, len,
                      sodium_base64_VARIANT_ORIGINAL);
    free(bin);
    *out = text;
    return PC_OK;
}

int pc_authorization_parse(const char *text, Popcast__SignedRotationAuthorization **out,
                           pc_err *err)
{
    *out = NULL;
    size_t plen = sizeof(AUTH_TEXT_PREFIX) - 1;
    if (text == NULL || strncmp(text, AUTH_TEXT_PREFIX, plen) != 0)
        return pc_err_set(err, PC_E_INVALID, "not a rotation authorization (expected \"%s...\")",
                          AUTH_TEXT_PREFIX);
    const char *b64 = text + plen;
    size_t b64_len = strcspn(b64, "\r\n");
    if (b64_len == 0 || b64_len > AUTH_TEXT_MAX || b64[b64_len + strspn(b64 + b64_len, "\r\n")])
        return pc_err_set(err, PC_E_INVALID,
                          "rotation authorization is empty, too long or has "
                          "trailing text");
    uint8_t bin[AUTH_TEXT_MAX];
    size_t bin_len = 0;
    if (sodium_base642bin(bin, sizeof(bin), b64, b64_len, NULL, &bin_len, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0)
        return pc_err_set(err, PC_E_INVALID, "rotation authorization is not valid base64");
    *out = popcast__signed_rotation_authorization__unpack(NULL, bin_len, bin);
    if (*out == NULL)
        return pc_err_set(err, PC_E_INVALID, "rotation authorization does not decode");
    return PC_OK;
}
