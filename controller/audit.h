/* audit.h - the controller's audit log: one JSON line for every write
 * the API was asked for, answered or refused (docs/operations.md "Audit
 * log"):
 *
 *   {"time":"2026-12-03T06:31:11.401Z","token":"admin","method":"POST",
 *    "path":"/v1/tenants/acme/bundles","status":201,"answer":{...}}
 *
 * token is "admin", a scoped token's id, or null when no valid token
 * came; idempotency_key is the request's Idempotency-Key, when it sent
 * one (a repeat of a keyed write is answered, and logged, with the first
 * one's version and seq and "replayed": true); answer is the JSON the
 * caller got (the version and seq, or the
 * error), absent when the answer was not JSON or there was none (status
 * 0: the connection failed first). A created token's secret ("token" in
 * the answer) is left out; its id stays. The file is opened for appending,
 * mode 0600; each line is one write(2), so lines from concurrent
 * requests never interleave. Lines are not synced one by one: a crash
 * can lose the last ones, never the changes (those are in the store).
 *
 * Thread safe. */
#ifndef PC_AUDIT_H
#define PC_AUDIT_H

#include <jansson.h>
#include <stdint.h>

#include "err.h"

typedef struct pc_audit pc_audit;

int pc_audit_open(pc_audit **out, const char *path, pc_err *err);
/* Opens the path again (after logrotate moved the file: SIGHUP); on
 * failure keeps writing to the old file and says why. */
int pc_audit_reopen(pc_audit *a, pc_err *err);
void pc_audit_close(pc_audit *a);

/* Appends one line: time, token, method, path, idempotency_key, status,
 * answer. token, idempotency_key NULL: none. answer: the body answered
 * (parsed if JSON; a repeat of a keyed write answers "replayed": true). */
void pc_audit_write(pc_audit *a, const char *token, const char *method, const char *path,
                    const char *idempotency_key, uint16_t status, const void *answer,
                    size_t answer_len);

#endif
