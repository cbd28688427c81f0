/* envelope.h - signing and verifying what the controller publishes.
 *
 * The controller serializes a Manifest once, signs those exact bytes and
 * ships them beside the signature. A receiver verifies the bytes against a
 * trusted key BEFORE decoding them, then checks that the decoded manifest is
 * self-consistent and matches the bundle bytes that came with it. Nothing a
 * receiver acts on is ever re-serialized before verification. */
#ifndef PC_ENVELOPE_H
#define PC_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "err.h"
#include "popcast.pb-c.h"

/* Serializes m (whose key_id is set to key's id here) and signs it. On
 * success out->manifest and out->signature are malloc'd; free them with
 * pc_envelope_signed_clear. */
int pc_envelope_sign_manifest(const pc_signing_key *key, Popcast__Manifest *m,
                              Popcast__SignedManifest *out, pc_err *err);
void pc_envelope_signed_clear(Popcast__SignedManifest *sm);

/* Verifies sm against ring and decodes it. On success *out is the decoded
 * manifest (free with popcast__manifest__free_unpacked). Checks: the key is
 * trusted, the signature covers the bytes, the bytes decode, the inner
 * key_id equals the outer hint, and the fields are well formed (kind,
 * tenant name, version and seq >= 1, hash length, runtime name). */
int pc_envelope_verify_manifest(const pc_keyring *ring, const Popcast__SignedManifest *sm,
                                Popcast__Manifest **out, pc_err *err);

/* pc_envelope_verify_manifest plus the bundle: for content-carrying kinds,
 * unless e->bundle_omitted, the bytes must have the manifest's size and
 * BLAKE2b-256; their size must not exceed max_bundle. */
int pc_envelope_verify_entry(const pc_keyring *ring, const Popcast__Entry *e, size_t max_bundle,
                             Popcast__Manifest **out, pc_err *err);

/* Checks bundle bytes against a verified manifest (size and hash). */
int pc_envelope_check_bundle(const Popcast__Manifest *m, const uint8_t *bundle, size_t len,
                             pc_err *err);

/* Heartbeats: the same scheme under their own signature domain. */
int pc_envelope_sign_heartbeat(const pc_signing_key *key, Popcast__Heartbeat *hb,
                               Popcast__SignedHeartbeat *out, pc_err *err);
int pc_envelope_verify_heartbeat(const pc_keyring *ring, const Popcast__SignedHeartbeat *sh,
                                 Popcast__Heartbeat **out, pc_err *err);

/* Snapshot assertions (SnapshotAssertion in proto/popcast.proto): what a
 * snapshot claims (seq, head, which rotations and tenants it carries),
 * signed under their own domain. */
#define PC_DOMAIN_SNAPSHOT "popcast-snapshot-v1"
int pc_envelope_sign_snapshot(const pc_signing_key *key, Popcast__SnapshotAssertion *a,
                              Popcast__SignedSnapshotAssertion *out, pc_err *err);
/* Verifies against ring, decodes, and checks the fields: seq >= 1,
 * head_seq >= seq, 32-byte digests. *out: free with
 * popcast__snapshot_assertion__free_unpacked. */
int pc_envelope_verify_snapshot(const pc_keyring *ring, const Popcast__SignedSnapshotAssertion *sa,
                                Popcast__SnapshotAssertion **out, pc_err *err);
/* The digest a SnapshotAssertion carries for a list of entries: BLAKE2b-256
 * over each entry's 8-byte big-endian manifest length and manifest bytes.
 * An entry without a signed manifest counts as an empty one. */
void pc_envelope_snapshot_digest(Popcast__Entry *const *entries, size_t n,
                                 uint8_t out[PC_HASH_LEN]);

/* Rotation authorizations: a root key's offline permission to replace the
 * signing key replaces_key_id by next_public_key (trust.h, rule 3). */
int pc_envelope_sign_authorization(const pc_signing_key *root, Popcast__RotationAuthorization *a,
                                   Popcast__SignedRotationAuthorization *out, pc_err *err);
/* Verifies against ring, decodes, and checks the fields' lengths. */
int pc_envelope_verify_authorization(const pc_keyring *ring,
                                     const Popcast__SignedRotationAuthorization *sa,
                                     Popcast__RotationAuthorization **out, pc_err *err);
/* The text form operators carry around: "popcast-rotation-auth-v1 <base64
 * of the SignedRotationAuthorization>". _format mallocs *out; _parse gives a
 * protobuf-c allocated message (free with
 * popcast__signed_rotation_authorization__free_unpacked). Parsing checks
 * the form, not the signature. */
int pc_authorization_format(const Popcast__SignedRotationAuthorization *sa, char **out,
                            pc_err *err);
int pc_authorization_parse(const char *text, Popcast__SignedRotationAuthorization **out,
                           pc_err *err);

/* True for kinds that carry a bundle (deploy, rollback). */
int pc_manifest_has_content(const Popcast__Manifest *m);
/* "deploy", "rollback", "delete", "key_rotation", "stage" (the API's
 * names), "unknown" for any other. */
const char *pc_entry_kind_name(Popcast__EntryKind k);

#endif
