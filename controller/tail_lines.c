/* tail_lines.c - checks and renders agents' tail batches (see
 * tail_lines.h). */
#include "tail_lines.h"

#include "json_text.h"
#include "names.h"

static const char *kind_name(Popcast__TailKind k)
{
    switch (k) {
    case POPCAST__TAIL_KIND__TAIL_KIND_PRINT: return "print";
    case POPCAST__TAIL_KIND__TAIL_KIND_ERROR: return "error";
    case POPCAST__TAIL_KIND__TAIL_KIND_REQUEST: return "request";
    default: return NULL;
    }
}

const char *pc_tail_batch_invalid(const Popcast__TailBatch *b)
{
    for (size_t i = 0; i < b->n_records; i++)
        if (!pc_tenant_name_valid(b->records[i]->tenant) || kind_name(b->records[i]->kind) == NULL)
            return "tail batch with a line of an invalid tenant or kind";
    for (size_t i = 0; i < b->n_drops; i++)
        if (!pc_tenant_name_valid(b->drops[i]->tenant))
            return "tail batch with a drop count of an invalid tenant";
    return NULL;
}

json_t *pc_tail_line_json(const Popcast__TailBatch *b, const Popcast__TailRecord *r)
{
    const char *kind = kind_name(r->kind);
    char at[32];
    pc_json_utc_time(at, sizeof(at), r->time_unix_ms);
    json_t *o = json_pack("{s:s,s:I,s:s,s:s}", "kind", kind ? kind : "?", "version",
                          (json_int_t)r->version, "time", at, "tenant", r->tenant);
    if (o == NULL)
        return NULL;
    int bad = pc_json_set_text(o, "agent", b->agent_id);
    bad |= pc_json_set_text(o, "pop", b->pop);
    if (r->kind != POPCAST__TAIL_KIND__TAIL_KIND_REQUEST)
        bad |= pc_json_set_text(o, "message", r->message);
    bad |= pc_json_set_text(o, "method", r->method);
    bad |= pc_json_set_text(o, "path", r->path);
    bad |= json_object_set_new(o, "status", json_integer(r->status));
    bad |= json_object_set_new(o, "duration_us", json_integer((json_int_t)r->duration_us));
    if (bad != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *pc_tail_drop_json(const Popcast__TailBatch *b, const Popcast__TailDrop *d)
{
    json_t *o = json_pack("{s:s,s:I,s:I}", "tenant", d->tenant, "dropped", (json_int_t)d->dropped,
                          "sampled_out", (json_int_t)d->sampled_out);
    if (o == NULL)
        return NULL;
    if ((pc_json_set_text(o, "agent", b->agent_id) | pc_json_set_text(o, "pop", b->pop)) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}
