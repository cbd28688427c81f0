/* audit.c - the audit log (see audit.h). */
#include "audit.h"

#include <stdlib.h>

#include "append_log.h"
#include "clock.h"
#include "json_text.h"

struct pc_audit {
    pc_append_log *file;
};

int pc_audit_open(pc_audit **out, const char *path, pc_err *err)
{
    pc_audit *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    int rc = pc_append_log_open(&a->file, "audit log", path, 0600, err);
    if (rc != PC_OK) {
        free(a);
        return rc;
    }
    *out = a;
    return PC_OK;
}

int pc_audit_reopen(pc_audit *a, pc_err *err)
{
    return pc_append_log_reopen(a->file, err);
}

void pc_audit_close(pc_audit *a)
{
    if (a == NULL)
        return;
    pc_append_log_close(a->file);
    free(a);
}

void pc_audit_write(pc_audit *a, const char *token, const char *method, const char *path,
                    const char *idempotency_key, uint16_t status, const void *answer,
                    size_t answer_len)
{
    if (a == NULL)
        return;
    char when[96];
    pc_json_utc_time(when, sizeof(when), pc_wall_ms());
    json_t *line = json_object();
    if (line == NULL)
        return;
    json_object_set_new(line, "time", json_string(when));
    json_object_set_new(line, "token", token != NULL ? json_string(token) : json_null());
    json_object_set_new(line, "method", json_string(method));
    /* The path is the caller's bytes: kept as text, whatever they are. */
    pc_json_set_text(line, "path", path);
    if (idempotency_key != NULL) /* the caller's bytes too */
        pc_json_set_text(line, "idempotency_key", idempotency_key);
    json_object_set_new(line, "status", json_integer(status));
    json_t *body = answer != NULL && answer_len > 0
                       ? json_loadb(answer, answer_len, JSON_DISABLE_EOF_CHECK, NULL)
                       : NULL;
    /* The one secret an answer carries: a created token. The log keeps
     * its id (in the answer too), never what authenticates. */
    if (json_is_object(body))
        json_object_del(body, "token");
    if (body != NULL)
        json_object_set_new(line, "answer", body);
    pc_append_log_json(a->file, line);
}
