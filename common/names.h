/* names.h - validation of names that come from outside: tenants, agents,
 * PoPs, bundle paths, idempotency keys. Every check is total: NULL and any length are safe. */
#ifndef PC_NAMES_H
#define PC_NAMES_H

#include <stdbool.h>
#include <stddef.h>

#define PC_TENANT_MAX          63
#define PC_ID_MAX              128 /* agent ids, PoP names, node ids */
#define PC_PATH_MAX            255 /* a path inside a bundle */
#define PC_IDEMPOTENCY_KEY_MAX 64
#define PC_CHANGE_MESSAGE_MAX  512 /* bytes */
#define PC_CHANGE_AUTHOR_MAX   64  /* "admin" or "token:" and a token id */
/* How errors describe a valid message. */
#define PC_CHANGE_MESSAGE_RULE "at most 512 bytes of UTF-8 with no control characters"

/* [a-z0-9-]{1,63} */
bool pc_tenant_name_valid(const char *name);
/* [A-Za-z0-9._-]{1,128} */
bool pc_id_valid(const char *id);
/* Relative, '/'-separated, components of [A-Za-z0-9._-], none "." or "..",
 * no empty component, at most PC_PATH_MAX bytes. */
bool pc_bundle_path_valid(const char *path);
/* A runtime adapter name: [a-z0-9]{1,32} */
bool pc_runtime_name_valid(const char *name);
/* A write's Idempotency-Key: [A-Za-z0-9._:-]{1,64} (a UUID, a hex
 * string, "deploy-2026-12-03.1", ...). */
bool pc_idempotency_key_valid(const char *key);
/* A change's message: valid UTF-8 of at most PC_CHANGE_MESSAGE_MAX bytes
 * with no control character (none of U+0000-U+001F, U+007F-U+009F), so it
 * shows as one line wherever it is printed. The empty message is valid. */
bool pc_change_message_valid(const char *message);

#endif
