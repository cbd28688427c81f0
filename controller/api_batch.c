/* api_batch.c - POST /v1/changes: many tenants' deploys in one request
 * (docs/api.md "Batches").
 *
 * Each change is its own deploy (its own version, seq and signature, as
 * if sent alone); the batch only saves the round trips, and lets group
 * commit put many of them in each raft command. Every change is checked
 * before any is submitted: one bad change refuses the whole batch and
 * nothing is made. Once submitted, each change's outcome is its own; the
 * answer lists them in the order they were sent. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sodium.h>

#include "api_internal.h"
#include "bundle.h"
#include "json_text.h"

typedef struct batch batch;

/* What a change's done callback needs to find its place. */
typedef struct slot {
    batch *b;
    size_t index;
    json_t *result; /* set once, by whoever ends the change */
} slot;

struct batch {
    pc_api *api;
    pc_httpd_req *rq;
    bool admin;
    char token_id[PC_ID_MAX + 1];
    char allowed[PC_TOKEN_MAX_TENANTS][PC_TENANT_MAX + 1]; /* a scoped token's */
    size_t n_allowed;
    char author[PC_CHANGE_AUTHOR_MAX + 1];
    size_t n;
    slot *slots;
    /* Changes not answered yet, plus one for the submitter: whoever takes
     * it to zero answers. */
    atomic_size_t pending;
};

static void batch_free(batch *b)
{
    for (size_t i = 0; b->slots != NULL && i < b->n; i++)
        json_decref(b->slots[i].result);
    free(b->slots);
    free(b);
}

static bool allowed(const batch *b, const char *tenant)
{
    if (b->admin)
        return true;
    for (size_t i = 0; i < b->n_allowed; i++)
        if (strcmp(b->allowed[i], tenant) == 0)
            return true;
    return false;
}

static void one_done(batch *b)
{
    if (atomic_fetch_sub(&b->pending, 1) != 1)
        return;
    size_t committed = 0;
    json_t *results = json_array();
    for (size_t i = 0; i < b->n; i++) {
        json_t *r = b->slots[i].result;
        committed += r != NULL && json_object_get(r, "error") == NULL;
        json_array_append_new(results, r != NULL ? r : json_null());
        b->slots[i].result = NULL;
    }
    json_t *answer = json_pack("{s:o,s:I,s:I}", "changes", results, "committed",
                               (json_int_t)committed, "failed", (json_int_t)(b->n - committed));
    pc_httpd_reply_json(b->rq, 200, answer, NULL);
    batch_free(b);
}

static json_t *error_json(const char *tenant, int code, const char *msg)
{
    return json_pack("{s:s,s:{s:s,s:o}}", "tenant", tenant, "error", "code", pc_err_name(code),
                     "message", pc_json_text(msg));
}

static void change_done(pc_change *c, const pc_change_result *r)
{
    slot *s = c->arg;
    batch *b = s->b;
    json_t *o;
    if (r->rc != PC_OK) {
        pc_metric_add(b->api->m_changes_failed, 1);
        o = error_json(c->tenant, r->rc, r->err.msg);
    } else {
        if (!r->replayed)
            pc_metric_add(b->api->m_changes, 1);
        o = api_tenant_change_json(c, r);
        if (o != NULL && r->replayed)
            json_object_set_new(o, "replayed", json_true());
    }
    s->result = o;
    one_done(b);
}

/* A string member of item, NULL when absent; *bad when present and not
 * a string without NUL bytes. */
static const char *string_of(json_t *item, const char *key, bool *bad)
{
    json_t *v = json_object_get(item, key);
    if (v == NULL)
        return NULL;
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v)) {
        *bad = true;
        return NULL;
    }
    return json_string_value(v);
}

static const char *const item_keys[] = {"tenant",  "source",          "bundle", "entrypoint",
                                        "runtime", "idempotency_key", "message"};

/* The change item i asks for, checked as a single upload is; NULL with
 * err set when refused. */
static pc_change *item_change(batch *b, json_t *item, size_t i, pc_err *err)
{
    if (!json_is_object(item))
        return pc_err_set(err, PC_E_INVALID, "change %zu is not an object", i), NULL;
    const char *key;
    json_t *val;
    json_object_foreach(item, key, val)
    {
        bool known = false;
        for (size_t k = 0; k < sizeof(item_keys) / sizeof(item_keys[0]); k++)
            known |= strcmp(key, item_keys[k]) == 0;
        if (!known)
            return pc_err_set(err, PC_E_INVALID, "change %zu: unknown field \"%s\"", i, key), NULL;
    }
    bool bad = false;
    const char *tenant = string_of(item, "tenant", &bad), *source = string_of(item, "source", &bad),
               *bundle = string_of(item, "bundle", &bad),
               *entrypoint = string_of(item, "entrypoint", &bad),
               *runtime = string_of(item, "runtime", &bad),
               *idem = string_of(item, "idempotency_key", &bad),
               *message = string_of(item, "message", &bad);
    if (bad)
        return pc_err_set(err, PC_E_INVALID, "change %zu: every field is a string", i), NULL;
    if (tenant == NULL || !pc_tenant_name_valid(tenant))
        return pc_err_set(err, PC_E_INVALID,
                          "change %zu: \"tenant\" must be 1 to 63 characters of a-z, 0-9 and '-'",
                          i),
               NULL;
    if (!allowed(b, tenant))
        return pc_err_set(err, PC_E_NOTFOUND, "change %zu: tenant %s not found", i, tenant), NULL;
    if ((source == NULL) == (bundle == NULL))
        return pc_err_set(err, PC_E_INVALID,
                          "change %zu: give exactly one of \"source\" (the entrypoint's text) and "
                          "\"bundle\" (a base64 archive)",
                          i),
               NULL;
    if (runtime == NULL)
        runtime = "lua";
    if (!pc_runtime_name_valid(runtime) || !api_runtime_allowed(b->api, runtime))
        return pc_err_set(err, PC_E_INVALID,
                          "change %zu: runtime '%s' is not one this cluster accepts", i, runtime),
               NULL;
    if (entrypoint == NULL)
        entrypoint = PC_BUNDLE_DEFAULT_ENTRYPOINT;
    if (source != NULL && !pc_bundle_path_valid(entrypoint))
        return pc_err_set(err, PC_E_INVALID, "change %zu: entrypoint is not a valid bundle path",
                          i),
               NULL;
    if (message != NULL &&
        (strlen(message) > PC_CHANGE_MESSAGE_MAX || !pc_change_message_valid(message)))
        return pc_err_set(err, PC_E_INVALID, "change %zu: \"message\" must be %s", i,
                          PC_CHANGE_MESSAGE_RULE),
               NULL;
    size_t text_len = source != NULL ? strlen(source) : strlen(bundle);
    size_t cap = source != NULL ? text_len : text_len / 4 * 3 + 3;
    uint8_t *body = malloc(cap ? cap : 1);
    size_t len = 0;
    if (body == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory"), NULL;
    if (source != NULL) {
        memcpy(body, source, text_len);
        len = text_len;
    } else if (sodium_base642bin(body, cap, bundle, text_len, NULL, &len, NULL,
                                 sodium_base64_VARIANT_ORIGINAL) != 0) {
        free(body);
        return pc_err_set(err, PC_E_INVALID, "change %zu: \"bundle\" is not base64", i), NULL;
    }
    pc_err cerr;
    pc_change *c =
        api_deploy_change(b->api, tenant, runtime, entrypoint, source != NULL, body, len, &cerr);
    if (c == NULL)
        return pc_err_set(err, cerr.code, "change %zu (%s): %s", i, tenant, cerr.msg), NULL;
    snprintf(c->author, sizeof(c->author), "%s", b->author);
    snprintf(c->message, sizeof(c->message), "%s", message ? message : "");
    if (idem != NULL && pc_change_set_idempotency(c, idem, &cerr) != PC_OK) {
        pc_change_free(c);
        return pc_err_set(err, cerr.code, "change %zu: %s", i, cerr.msg), NULL;
    }
    c->done = change_done;
    c->arg = &b->slots[i];
    return c;
}

/* The changes of root, all checked (NULL with err set when one is
 * refused: nothing is kept). */
static pc_change **batch_changes(batch *b, json_t *root, pc_err *err)
{
    json_t *list = json_object_get(root, "changes");
    if (!json_is_object(root) || json_object_size(root) != 1 || !json_is_array(list) ||
        json_array_size(list) == 0 || json_array_size(list) > PC_API_BATCH_MAX)
        return pc_err_set(err, PC_E_INVALID,
                          "the body must be {\"changes\": [...]} with 1 to %d changes",
                          PC_API_BATCH_MAX),
               NULL;
    b->n = json_array_size(list);
    pc_change **changes = calloc(b->n, sizeof(*changes));
    b->slots = calloc(b->n, sizeof(*b->slots));
    if (changes == NULL || b->slots == NULL) {
        free(changes);
        return pc_err_set(err, PC_E_NOMEM, "out of memory"), NULL;
    }
    for (size_t i = 0; i < b->n; i++) {
        b->slots[i] = (slot){b, i, NULL};
        if ((changes[i] = item_change(b, json_array_get(list, i), i, err)) == NULL) {
            for (size_t k = 0; k < i; k++)
                pc_change_free(changes[k]);
            free(changes);
            return NULL;
        }
    }
    return changes;
}

static void batch_body(void *arg, pc_httpd_req *rq, int rc, uint8_t *body, size_t len)
{
    batch *b = arg;
    pc_api *api = b->api;
    pc_change **changes = NULL;
    pc_err err;
    json_error_t jerr;
    json_t *root =
        rc == PC_OK ? json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    free(body);
    if (rc != PC_OK) {
        /* answered already */
    } else if (root == NULL) {
        pc_httpd_error(rq, PC_E_INVALID, "the body is not JSON: %s", jerr.text);
    } else if ((changes = batch_changes(b, root, &err)) == NULL) {
        pc_httpd_error(rq, err.code, "%s", err.msg);
    }
    json_decref(root);
    if (changes == NULL) {
        batch_free(b);
        return;
    }
    /* The route took one change from the token's rate; the rest now, all
     * or none. */
    if (api_take_writes(api, rq, b->admin, b->token_id, b->n - 1, 1)) {
        atomic_store(&b->pending, b->n + 1);
        for (size_t i = 0; i < b->n; i++) {
            if (pc_pipeline_submit(api->pipeline, changes[i], &err) != PC_OK) {
                b->slots[i].result = error_json(changes[i]->tenant, err.code, err.msg);
                pc_change_free(changes[i]);
                one_done(b);
            }
        }
        free(changes);
        one_done(b); /* the submitter's */
        return;
    }
    for (size_t i = 0; i < b->n; i++)
        pc_change_free(changes[i]);
    free(changes);
    batch_free(b);
}

void api_post_changes(api_call *call)
{
    batch *b = calloc(1, sizeof(*b));
    if (b == NULL) {
        pc_httpd_error(call->rq, PC_E_NOMEM, "out of memory");
        return;
    }
    b->api = call->api;
    b->rq = call->rq;
    b->admin = call->who->admin;
    const Popcast__TokenRecord *t = call->who->token;
    if (!b->admin && t != NULL) {
        snprintf(b->token_id, sizeof(b->token_id), "%s", t->id);
        for (size_t i = 0; i < t->n_tenants && i < PC_TOKEN_MAX_TENANTS; i++)
            snprintf(b->allowed[b->n_allowed++], PC_TENANT_MAX + 1, "%s", t->tenants[i]);
    }
    api_author_of(call->who, b->author);
    if (pc_httpd_header(call->rq, "Idempotency-Key") != NULL) {
        pc_httpd_error(
            call->rq, PC_E_INVALID,
            "a batch takes an idempotency_key per change, not an Idempotency-Key header");
        free(b);
        return;
    }
    pc_httpd_read_body(call->rq, PC_API_BATCH_BODY_MAX, batch_body, b);
}
