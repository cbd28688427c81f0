/* envelope.c - manifest and heartbeat signatures (see envelope.h). */
#include "envelope.h"

#include <stdlib.h>
#include <string.h>

#include "names.h"

int pc_manifest_has_content(const Popcast__Manifest *m)
{
    return m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY ||
           m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_ROLLBACK;
}

int pc_envelope_sign_manifest(const pc_signing_key *key, Popcast__Manifest *m,
                              Popcast__SignedManifest *out, pc_err *err)
{
    popcast__signed_manifest__init(out);
    m->key_id.data = (uint8_t *)key->pub.id;
    m->key_id.len = PC_KEY_ID_LEN;
    size_t len = popcast__manifest__get_packed_size(m);
    uint8_t *bytes = malloc(len ? len : 1);
    uint8_t *sig = malloc(PC_SIG_LEN);
    uint8_t *kid = malloc(PC_KEY_ID_LEN);
    if (bytes == NULL || sig == NULL || kid == NULL) {
        free(bytes);
        free(sig);
        free(kid);
        m->key_id.data = NULL;
        m->key_id.len = 0;
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    popcast__manifest__pack(m, bytes);
    /* m must not keep pointing at key memory the caller may wipe. */
    m->key_id.data = NULL;
    m->key_id.len = 0;
    pc_sign(key, PC_DOMAIN_MANIFEST, bytes, len, sig);
    memcpy(kid, key->pub.id, PC_KEY_ID_LEN);
    out->manifest.data = bytes;
    out->manifest.len = len;
    out->signature.data = sig;
    out->signature.len = PC_SIG_LEN;
    out->key_id.data = kid;
    out->key_id.len = PC_KEY_ID_LEN;
    return PC_OK;
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
    case POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION: break;
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
    return PC_OK;
}

int pc_envelope_verify_manifest(const pc_keyring *ring, const Popcast__SignedManifest *sm,
                                Popcast__Manifest **out, pc_err *err)
{
    *out = NULL;
    if (sm == NULL || sm->manifest.len == 0)
        return pc_err_set(err, PC_E_INVALID, "entry has no manifest");
    const pc_public_key *key = pc_keyring_find(ring, sm->key_id.data, sm->key_id.len);
    if (key == NULL)
        return pc_err_set(err, PC_E_UNTRUSTED_KEY, "manifest signed by an untrusted key");
    if (pc_verify(key, PC_DOMAIN_MANIFEST, sm->manifest.data, sm->manifest.len, sm->signature.data,
                  sm->signature.len) != PC_OK)
        return pc_err_set(err, PC_E_BAD_SIGNATURE, "manifest signature does not verify");
    Popcast__Manifest *m = popcast__manifest__unpack(NULL, sm->manifest.len, sm->manifest.data);
    if (m == NULL)
        return pc_err_set(err, PC_E_INVALID, "signed manifest bytes do not decode");
    if (m->key_id.len != PC_KEY_ID_LEN || memcmp(m->key_id.data, key->id, PC_KEY_ID_LEN) != 0) {
        popcast__manifest__free_unpacked(m, NULL);
        return pc_err_set(err, PC_E_BAD_SIGNATURE, "manifest key id differs from its envelope");
    }
    int rc = check_manifest_fields(m, err);
    if (rc != PC_OK) {
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
    hb->key_id.data = (uint8_t *)key->pub.id;
    hb->key_id.len = PC_KEY_ID_LEN;
    size_t len = popcast__heartbeat__get_packed_size(hb);
    uint8_t *bytes = malloc(len ? len : 1);
    uint8_t *sig = malloc(PC_SIG_LEN);
    uint8_t *kid = malloc(PC_KEY_ID_LEN);
    if (bytes == NULL || sig == NULL || kid == NULL) {
        free(bytes);
        free(sig);
        free(kid);
        hb->key_id.data = NULL;
        hb->key_id.len = 0;
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    popcast__heartbeat__pack(hb, bytes);
    hb->key_id.data = NULL;
    hb->key_id.len = 0;
    pc_sign(key, PC_DOMAIN_HEARTBEAT, bytes, len, sig);
    memcpy(kid, key->pub.id, PC_KEY_ID_LEN);
    out->heartbeat.data = bytes;
    out->heartbeat.len = len;
    out->signature.data = sig;
    out->signature.len = PC_SIG_LEN;
    out->key_id.data = kid;
    out->key_id.len = PC_KEY_ID_LEN;
    return PC_OK;
}

int pc_envelope_verify_heartbeat(const pc_keyring *ring, const Popcast__SignedHeartbeat *sh,
                                 Popcast__Heartbeat **out, pc_err *err)
{
    *out = NULL;
    if (sh == NULL || sh->heartbeat.len == 0)
        return pc_err_set(err, PC_E_INVALID, "empty heartbeat");
    const pc_public_key *key = pc_keyring_find(ring, sh->key_id.data, sh->key_id.len);
    if (key == NULL)
        return pc_err_set(err, PC_E_UNTRUSTED_KEY, "heartbeat signed by an untrusted key");
    if (pc_verify(key, PC_DOMAIN_HEARTBEAT, sh->heartbeat.data, sh->heartbeat.len,
                  sh->signature.data, sh->signature.len) != PC_OK)
        return pc_err_set(err, PC_E_BAD_SIGNATURE, "heartbeat signature does not verify");
    Popcast__Heartbeat *hb =
        popcast__heartbeat__unpack(NULL, sh->heartbeat.len, sh->heartbeat.data);
    if (hb == NULL)
        return pc_err_set(err, PC_E_INVALID, "signed heartbeat bytes do not decode");
    if (hb->key_id.len != PC_KEY_ID_LEN || memcmp(hb->key_id.data, key->id, PC_KEY_ID_LEN) != 0) {
        popcast__heartbeat__free_unpacked(hb, NULL);
        return pc_err_set(err, PC_E_BAD_SIGNATURE, "heartbeat key id differs from its envelope");
    }
    *out = hb;
    return PC_OK;
}
