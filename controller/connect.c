/* connect.c - the API over the Connect protocol (see connect.h). */
#include "connect.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "err.h"
#include "json_text.h"
#include "pb_struct.h"
#include "sse.h"
#include "popcast_api.pb-c.h"
#include "google/protobuf/wrappers.pb-c.h"

#define PREFIX "/popcast.v1."

typedef struct method {
    const char *service, *name;
    const char *http_method, *path; /* the REST operation */
    const ProtobufCMessageDescriptor *request;
    bool stream;
} method;

/* Every method of proto/popcast_api.proto, with the REST operation it is
 * (docs/openapi.yaml). */
static const method methods[] = {
    {"HealthService", "GetHealth", "GET", "/v1/health",
     &popcast__v1__get_health_request__descriptor, false},
    {"TenantService", "ListTenants", "GET", "/v1/tenants",
     &popcast__v1__list_tenants_request__descriptor, false},
    {"TenantService", "GetTenant", "GET", "/v1/tenants/{tenant}",
     &popcast__v1__get_tenant_request__descriptor, false},
    {"TenantService", "DeleteTenant", "DELETE", "/v1/tenants/{tenant}",
     &popcast__v1__delete_tenant_request__descriptor, false},
    {"TenantService", "ListVersions", "GET", "/v1/tenants/{tenant}/versions",
     &popcast__v1__list_versions_request__descriptor, false},
    {"TenantService", "DeployBundle", "POST", "/v1/tenants/{tenant}/bundles",
     &popcast__v1__deploy_bundle_request__descriptor, false},
    {"TenantService", "Rollback", "POST", "/v1/tenants/{tenant}/rollback",
     &popcast__v1__rollback_request__descriptor, false},
    {"TenantService", "GetVersionRollout", "GET", "/v1/tenants/{tenant}/versions/{version}/rollout",
     &popcast__v1__get_version_rollout_request__descriptor, false},
    {"TenantService", "GetVersionHealth", "GET", "/v1/tenants/{tenant}/versions/{version}/health",
     &popcast__v1__get_version_health_request__descriptor, false},
    {"TenantService", "StageVersion", "POST", "/v1/tenants/{tenant}/versions/{version}/stage",
     &popcast__v1__stage_version_request__descriptor, false},
    {"TenantService", "GetTenantPlan", "GET", "/v1/tenants/{tenant}/plan",
     &popcast__v1__get_tenant_plan_request__descriptor, false},
    {"TenantService", "SetTenantPlan", "PUT", "/v1/tenants/{tenant}/plan",
     &popcast__v1__set_tenant_plan_request__descriptor, false},
    {"TenantService", "ClearTenantPlan", "DELETE", "/v1/tenants/{tenant}/plan",
     &popcast__v1__clear_tenant_plan_request__descriptor, false},
    {"ChangeService", "DeployBatch", "POST", "/v1/changes",
     &popcast__v1__deploy_batch_request__descriptor, false},
    {"DeploymentService", "StartDeployment", "POST", "/v1/tenants/{tenant}/deployments",
     &popcast__v1__start_deployment_request__descriptor, false},
    {"DeploymentService", "ListDeployments", "GET", "/v1/tenants/{tenant}/deployments",
     &popcast__v1__list_deployments_request__descriptor, false},
    {"DeploymentService", "GetDeployment", "GET", "/v1/tenants/{tenant}/deployments/{id}",
     &popcast__v1__get_deployment_request__descriptor, false},
    {"DeploymentService", "PauseDeployment", "POST", "/v1/tenants/{tenant}/deployments/{id}/pause",
     &popcast__v1__pause_deployment_request__descriptor, false},
    {"DeploymentService", "ResumeDeployment", "POST",
     "/v1/tenants/{tenant}/deployments/{id}/resume",
     &popcast__v1__resume_deployment_request__descriptor, false},
    {"DeploymentService", "AbortDeployment", "POST", "/v1/tenants/{tenant}/deployments/{id}/abort",
     &popcast__v1__abort_deployment_request__descriptor, false},
    {"DeploymentService", "PromoteDeployment", "POST",
     "/v1/tenants/{tenant}/deployments/{id}/promote",
     &popcast__v1__promote_deployment_request__descriptor, false},
    {"FleetService", "GetRolloutBySeq", "GET", "/v1/rollout/{seq}",
     &popcast__v1__get_rollout_by_seq_request__descriptor, false},
    {"FleetService", "GetFleet", "GET", "/v1/fleet", &popcast__v1__get_fleet_request__descriptor,
     false},
    {"ClusterService", "GetCluster", "GET", "/v1/cluster",
     &popcast__v1__get_cluster_request__descriptor, false},
    {"ClusterService", "AddNode", "POST", "/v1/cluster/nodes",
     &popcast__v1__add_node_request__descriptor, false},
    {"ClusterService", "RemoveNode", "DELETE", "/v1/cluster/nodes/{id}",
     &popcast__v1__remove_node_request__descriptor, false},
    {"TokenService", "ListTokens", "GET", "/v1/tokens",
     &popcast__v1__list_tokens_request__descriptor, false},
    {"TokenService", "CreateToken", "POST", "/v1/tokens",
     &popcast__v1__create_token_request__descriptor, false},
    {"TokenService", "RevokeToken", "DELETE", "/v1/tokens/{id}",
     &popcast__v1__revoke_token_request__descriptor, false},
    {"AgentService", "ListAgents", "GET", "/v1/agents",
     &popcast__v1__list_agents_request__descriptor, false},
    {"AgentService", "EnrollAgent", "POST", "/v1/agents",
     &popcast__v1__enroll_agent_request__descriptor, false},
    {"AgentService", "RevokeAgent", "DELETE", "/v1/agents/{agent_id}",
     &popcast__v1__revoke_agent_request__descriptor, false},
    {"KeyService", "ListKeys", "GET", "/v1/keys", &popcast__v1__list_keys_request__descriptor,
     false},
    {"KeyService", "RotateKey", "POST", "/v1/keys/rotate",
     &popcast__v1__rotate_key_request__descriptor, false},
    {"WatchService", "Watch", "GET", "/v1/watch", &popcast__v1__watch_request__descriptor, true},
    {"WatchService", "Tail", "GET", "/v1/tenants/{tenant}/tail",
     &popcast__v1__tail_request__descriptor, true},
};

bool pc_connect_is_rpc(const char *target)
{
    return strncmp(target, PREFIX, strlen(PREFIX)) == 0;
}

/* Connect's codes (connectrpc.com/docs/protocol, "Error Codes"). */
const char *pc_connect_code(const char *code, unsigned http_status)
{
    static const struct {
        const char *popcast, *connect;
    } map[] = {
        {"invalid", "invalid_argument"},
        {"method_not_allowed", "invalid_argument"},
        {"length_required", "invalid_argument"},
        {"unsupported_media_type", "invalid_argument"},
        {"runtime_error", "invalid_argument"},
        {"limit_exceeded", "invalid_argument"},
        {"not_found", "not_found"},
        {"exists", "already_exists"},
        {"stale_version", "failed_precondition"},
        {"unproven", "failed_precondition"},
        {"too_large", "resource_exhausted"},
        {"out_of_memory", "resource_exhausted"},
        {"rate_limited", "resource_exhausted"},
        {"unavailable", "unavailable"},
        {"not_leader", "unavailable"},
        {"quarantined", "unavailable"},
        {"outcome_unknown", "unavailable"},
        {"unauthorized", "unauthenticated"},
        {"forbidden", "permission_denied"},
        {"timeout", "deadline_exceeded"},
        {"compacted", "out_of_range"},
        {"internal", "internal"},
        {"store_error", "internal"},
        {"io_error", "internal"},
    };
    for (size_t i = 0; code != NULL && i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(map[i].popcast, code) == 0)
            return map[i].connect;
    return http_status == 503 ? "unavailable" : http_status >= 500 ? "internal" : "unknown";
}

unsigned pc_connect_http_status(const char *code)
{
    static const struct {
        const char *code;
        unsigned status;
    } map[] = {
        {"canceled", 499},
        {"unknown", 500},
        {"invalid_argument", 400},
        {"deadline_exceeded", 504},
        {"not_found", 404},
        {"already_exists", 409},
        {"permission_denied", 403},
        {"resource_exhausted", 429},
        {"failed_precondition", 400},
        {"aborted", 409},
        {"out_of_range", 400},
        {"unimplemented", 501},
        {"internal", 500},
        {"unavailable", 503},
        {"data_loss", 500},
        {"unauthenticated", 401},
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(map[i].code, code) == 0)
            return map[i].status;
    return 500;
}

/* Answers a Connect error: {"code","message"} in JSON, whatever the
 * call's content type (the protocol's unary error form). */
static void reply_error(pc_httpd_req *rq, const char *code, const char *message,
                        const char *const *headers)
{
    json_t *o = json_pack("{s:s}", "code", code);
    if (o != NULL)
        pc_json_set_text(o, "message", message);
    char *text = o ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(o);
    if (text == NULL) {
        static const char oom[] = "{\"code\":\"resource_exhausted\",\"message\":\"out of memory\"}";
        pc_httpd_reply(rq, 429, "application/json", oom, sizeof(oom) - 1, NULL);
        return;
    }
    pc_httpd_reply(rq, (uint16_t)pc_connect_http_status(code), "application/json", text,
                   strlen(text), headers);
    free(text);
}

static const method *find_method(const char *target)
{
    const char *p = target + strlen(PREFIX);
    size_t plen = strcspn(p, "?");
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        const method *m = &methods[i];
        size_t slen = strlen(m->service), nlen = strlen(m->name);
        if (plen == slen + 1 + nlen && strncmp(p, m->service, slen) == 0 && p[slen] == '/' &&
            strncmp(p + slen + 1, m->name, nlen) == 0)
            return m;
    }
    return NULL;
}

/* lowerCamelCase of a proto field name: the name protobuf's JSON mapping
 * writes (clients send it; the proto name is accepted as well). */
static void json_name(const char *name, char *out, size_t cap)
{
    size_t n = 0;
    bool upper = false;
    for (const char *p = name; *p != '\0' && n + 1 < cap; p++) {
        if (*p == '_') {
            upper = true;
            continue;
        }
        out[n++] = upper ? (char)toupper((unsigned char)*p) : *p;
        upper = false;
    }
    out[n] = '\0';
}

/* What a call asks, field by field, as JSON values under the fields'
 * proto names: strings, integers, reals, booleans, the body (an object)
 * and the bundle (a string of bytes, kept as given). */
typedef struct call_fields {
    json_t *values;
    uint8_t *bundle;
    size_t bundle_len;
} call_fields;

/* The scalar type a field holds: its own, or, for a wrapper message
 * (google.protobuf.UInt64Value, ...), its value's; *wrapped says which.
 * PROTOBUF_C_TYPE_MESSAGE for a Struct. */
static ProtobufCType field_type(const ProtobufCFieldDescriptor *f, bool *wrapped)
{
    *wrapped = false;
    if (f->type != PROTOBUF_C_TYPE_MESSAGE)
        return f->type;
    const ProtobufCMessageDescriptor *d = f->descriptor;
    if (d == &google__protobuf__struct__descriptor)
        return PROTOBUF_C_TYPE_MESSAGE;
    *wrapped = true;
    return d->fields[0].type; /* "value" */
}

/* A scalar at p of type t as JSON (NULL: the type's default, left out
 * unless keep). */
static json_t *scalar_json(ProtobufCType t, const void *p, bool keep, bool *bad)
{
    switch (t) {
    case PROTOBUF_C_TYPE_STRING: {
        /* protobuf-c does not check a string is UTF-8; jansson does. */
        const char *s = *(char *const *)p;
        if (s == NULL || (!keep && s[0] == '\0'))
            return NULL;
        json_t *j = json_string(s);
        *bad = j == NULL;
        return j;
    }
    case PROTOBUF_C_TYPE_UINT64: {
        uint64_t u = *(const uint64_t *)p;
        if (u > (uint64_t)INT64_MAX) {
            *bad = true;
            return NULL;
        }
        return keep || u != 0 ? json_integer((json_int_t)u) : NULL;
    }
    case PROTOBUF_C_TYPE_DOUBLE: {
        double x = *(const double *)p;
        if (!isfinite(x)) {
            *bad = true;
            return NULL;
        }
        return keep || x != 0 ? json_real(x) : NULL;
    }
    case PROTOBUF_C_TYPE_BOOL:
        return *(const protobuf_c_boolean *)p ? json_true() : keep ? json_false() : NULL;
    default: return NULL;
    }
}

static int from_proto(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len,
                      call_fields *out, char *why, size_t cap)
{
    ProtobufCMessage *msg = protobuf_c_message_unpack(d, NULL, len, data);
    if (msg == NULL) {
        snprintf(why, cap, "the body is not a %s", d->name);
        return PC_E_INVALID;
    }
    int rc = PC_OK;
    for (unsigned i = 0; i < d->n_fields && rc == PC_OK; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *field = (const char *)msg + f->offset;
        bool wrapped, bad = false;
        ProtobufCType t = field_type(f, &wrapped);
        json_t *v = NULL;
        if (f->type == PROTOBUF_C_TYPE_BYTES) {
            const ProtobufCBinaryData *b = (const ProtobufCBinaryData *)field;
            if (b->len > 0 && (out->bundle = malloc(b->len)) != NULL) {
                memcpy(out->bundle, b->data, b->len);
                out->bundle_len = b->len;
            }
        } else if (t == PROTOBUF_C_TYPE_MESSAGE) {
            const Google__Protobuf__Struct *s = *(Google__Protobuf__Struct *const *)field;
            bad = s != NULL && (v = pc_struct_to_json(s)) == NULL;
        } else if (wrapped) {
            /* Present when the wrapper is: 0, "" and false count. */
            const ProtobufCMessage *w = *(ProtobufCMessage *const *)field;
            if (w != NULL)
                v = scalar_json(t, (const char *)w + w->descriptor->fields[0].offset, true, &bad);
        } else {
            v = scalar_json(t, field, false, &bad);
        }
        if (bad) {
            snprintf(why, cap, "%s holds a value out of range, or text that is not UTF-8", f->name);
            rc = PC_E_INVALID;
        }
        if (v != NULL)
            json_object_set_new(out->values, f->name, v);
    }
    protobuf_c_message_free_unpacked(msg, NULL);
    return rc;
}

static int from_json(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len,
                     call_fields *out, char *why, size_t cap)
{
    json_error_t jerr;
    json_t *doc = len == 0 ? json_object() : json_loadb((const char *)data, len, 0, &jerr);
    if (!json_is_object(doc)) {
        json_decref(doc);
        snprintf(why, cap, "the body is not a JSON object");
        return PC_E_INVALID;
    }
    const char *key;
    json_t *v;
    int rc = PC_OK;
    json_object_foreach(doc, key, v)
    {
        const ProtobufCFieldDescriptor *f = NULL;
        for (unsigned i = 0; i < d->n_fields && f == NULL; i++) {
            char camel[64];
            json_name(d->fields[i].name, camel, sizeof(camel));
            if (strcmp(d->fields[i].name, key) == 0 || strcmp(camel, key) == 0)
                f = &d->fields[i];
        }
        if (f == NULL) {
            snprintf(why, cap, "%s has no field %.64s", d->name, key);
            rc = PC_E_INVALID;
            break;
        }
        if (json_is_null(v))
            continue; /* the JSON mapping's "absent" */
        json_t *val = NULL;
        bool wrapped;
        switch (field_type(f, &wrapped)) {
        case PROTOBUF_C_TYPE_STRING:
            if (json_is_string(v))
                val = json_incref(v);
            break;
        case PROTOBUF_C_TYPE_UINT64:
            /* 64-bit integers are strings in protobuf's JSON; numbers too. */
            if (json_is_integer(v) && json_integer_value(v) >= 0) {
                val = json_incref(v);
            } else if (json_is_string(v)) {
                const char *s = json_string_value(v);
                char *end = NULL;
                errno = 0;
                unsigned long long u = strtoull(s, &end, 10);
                if (isdigit((unsigned char)s[0]) && *end == '\0' && errno == 0 &&
                    u <= (unsigned long long)INT64_MAX)
                    val = json_integer((json_int_t)u);
            }
            break;
        case PROTOBUF_C_TYPE_DOUBLE:
            if (json_is_number(v) && isfinite(json_number_value(v)))
                val = json_real(json_number_value(v));
            break;
        case PROTOBUF_C_TYPE_BOOL:
            if (json_is_boolean(v) && json_is_true(v))
                val = json_true();
            else if (json_is_boolean(v))
                val = json_false();
            break;
        case PROTOBUF_C_TYPE_BYTES:
            if (json_is_string(v)) {
                const char *s = json_string_value(v);
                size_t slen = json_string_length(v);
                uint8_t *buf = malloc(slen + 1);
                size_t blen = 0;
                /* Standard or URL-safe base64, padded or not (protobuf's
                 * JSON mapping accepts all four). */
                if (buf != NULL &&
                    (sodium_base642bin(buf, slen + 1, s, slen, "\n\r ", &blen, NULL,
                                       sodium_base64_VARIANT_ORIGINAL) == 0 ||
                     sodium_base642bin(buf, slen + 1, s, slen, "\n\r ", &blen, NULL,
                                       sodium_base64_VARIANT_ORIGINAL_NO_PADDING) == 0 ||
                     sodium_base642bin(buf, slen + 1, s, slen, "\n\r ", &blen, NULL,
                                       sodium_base64_VARIANT_URLSAFE) == 0 ||
                     sodium_base642bin(buf, slen + 1, s, slen, "\n\r ", &blen, NULL,
                                       sodium_base64_VARIANT_URLSAFE_NO_PADDING) == 0)) {
                    free(out->bundle);
                    out->bundle = buf;
                    out->bundle_len = blen;
                    continue;
                }
                free(buf);
            }
            break;
        case PROTOBUF_C_TYPE_MESSAGE:
            if (json_is_object(v))
                val = json_incref(v);
            break;
        default: break;
        }
        if (val == NULL) {
            snprintf(why, cap, "%s: %s has the wrong type", d->name, f->name);
            rc = PC_E_INVALID;
            break;
        }
        json_object_set_new(out->values, f->name, val);
    }
    json_decref(doc);
    return rc;
}

/* Appends s to buf, percent-encoding all but RFC 3986's unreserved
 * characters; false when it does not fit. */
static bool put_encoded(char *buf, size_t cap, size_t *n, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        if (*n + 4 >= cap)
            return false;
        if (isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            buf[(*n)++] = (char)*p;
        } else {
            buf[(*n)++] = '%';
            buf[(*n)++] = hex[*p >> 4];
            buf[(*n)++] = hex[*p & 15];
        }
    }
    buf[*n] = '\0';
    return true;
}

/* A field's value as REST text (NULL: leave it out). */
static const char *value_text(const json_t *v, char *buf, size_t cap)
{
    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_integer(v)) {
        snprintf(buf, cap, "%lld", (long long)json_integer_value(v));
        return buf;
    }
    if (json_is_real(v)) {
        snprintf(buf, cap, "%.17g", json_real_value(v));
        return buf;
    }
    if (json_is_true(v))
        return "true";
    return NULL; /* false: the flag is not given */
}

/* The REST target of call fields f for method m: path parameters in the
 * template, every other field but the body as a query parameter. */
static int rest_target(const method *m, json_t *f, char *out, size_t cap, char *why, size_t wcap)
{
    size_t n = 0;
    out[0] = '\0';
    for (const char *p = m->path; *p != '\0';) {
        if (*p != '{') {
            if (n + 2 >= cap)
                return PC_E_INVALID;
            out[n++] = *p++;
            out[n] = '\0';
            continue;
        }
        const char *end = strchr(p, '}');
        char name[64];
        snprintf(name, sizeof(name), "%.*s", (int)(end - p - 1), p + 1);
        char num[32];
        const char *text = value_text(json_object_get(f, name), num, sizeof(num));
        if (text == NULL || text[0] == '\0') {
            snprintf(why, wcap, "%s is required", name);
            return PC_E_INVALID;
        }
        if (!put_encoded(out, cap, &n, text))
            return PC_E_INVALID;
        json_object_del(f, name);
        p = end + 1;
    }
    char sep = '?';
    const char *key;
    json_t *v;
    json_object_foreach(f, key, v)
    {
        if (strcmp(key, "body") == 0 || strcmp(key, "content_type") == 0)
            continue;
        char num[32];
        const char *text = value_text(v, num, sizeof(num));
        if (text == NULL)
            continue;
        if (n + strlen(key) + 3 >= cap)
            return PC_E_INVALID;
        n += (size_t)snprintf(out + n, cap - n, "%c%s=", sep, key);
        sep = '&';
        if (!put_encoded(out, cap, &n, text))
            return PC_E_INVALID;
    }
    return PC_OK;
}

typedef struct call {
    pc_httpd_req *outer;
    bool proto; /* application/proto (else JSON) */
} call;

/* The REST answer, as the Connect answer. */
static void answered(void *arg, uint16_t status, const char *content_type, const void *body,
                     size_t len, const char *const *headers)
{
    call *c = arg;
    pc_httpd_req *rq = c->outer;
    bool proto = c->proto;
    free(c);
    json_t *doc = len > 0 ? json_loadb(body, len, 0, NULL) : json_object();
    (void)content_type;
    if (status >= 200 && status < 300 && json_is_object(doc)) {
        if (!proto) {
            pc_httpd_reply(rq, 200, "application/json", body, len, NULL);
        } else {
            Google__Protobuf__Struct *s = pc_struct_from_json(doc);
            size_t plen = s ? google__protobuf__struct__get_packed_size(s) : 0;
            uint8_t *buf = s ? malloc(plen ? plen : 1) : NULL;
            if (buf == NULL) {
                reply_error(rq, "resource_exhausted", "out of memory", NULL);
            } else {
                google__protobuf__struct__pack(s, buf);
                pc_httpd_reply(rq, 200, "application/proto", buf, plen, NULL);
            }
            free(buf);
            if (s != NULL)
                google__protobuf__struct__free_unpacked(s, NULL);
        }
        json_decref(doc);
        return;
    }
    json_t *e = json_object_get(doc, "error");
    const char *code = json_string_value(json_object_get(e, "code"));
    const char *msg = json_string_value(json_object_get(e, "message"));
    const char *leader = json_string_value(json_object_get(e, "leader"));
    char text[1400];
    if (status == 307)
        snprintf(text, sizeof(text), "%s (the leader: %s)", msg ? msg : "not the leader",
                 leader ? leader : "unknown");
    else if (status >= 200 && status < 300)
        snprintf(text, sizeof(text), "the answer is not a JSON object");
    else
        snprintf(text, sizeof(text), "%s", msg ? msg : "failed");
    /* Retry-After stays: a client backing off reads it. */
    const char *keep[3] = {NULL};
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i += 2)
        if (strcasecmp(headers[i], "Retry-After") == 0) {
            keep[0] = headers[i];
            keep[1] = headers[i + 1];
        }
    reply_error(rq,
                status == 307                   ? "unavailable"
                : status >= 200 && status < 300 ? "internal"
                                                : pc_connect_code(code, status),
                text, keep);
    json_decref(doc);
}

/* Server streams (Watch, Tail): the REST route's Server-Sent Events,
 * each event as a WatchEvent message in Connect's envelope (a flags
 * byte, a 4-byte big-endian length, the message), and the events that
 * end a stream ("cut", "compacted") as the end-of-stream message (flags
 * 0x02) with the error. */
#define END_STREAM 0x02

typedef struct stream_state {
    pc_httpd_req *outer; /* until the stream starts or is refused */
    pc_sse sse;
    bool proto, ended;
    uint8_t *out;
    size_t len, cap;
} stream_state;

static bool put_envelope(stream_state *s, uint8_t flags, const void *msg, size_t len)
{
    if (s->len + len + 5 > s->cap) {
        size_t want = (s->len + len + 5) * 2;
        uint8_t *grown = realloc(s->out, want);
        if (grown == NULL)
            return false;
        s->out = grown;
        s->cap = want;
    }
    uint8_t *p = s->out + s->len;
    p[0] = flags;
    p[1] = (uint8_t)(len >> 24);
    p[2] = (uint8_t)(len >> 16);
    p[3] = (uint8_t)(len >> 8);
    p[4] = (uint8_t)len;
    memcpy(p + 5, msg, len);
    s->len += len + 5;
    return true;
}

/* The end-of-stream message: {"error":{"code","message"}} (JSON in both
 * codecs, as the protocol says). */
static bool put_end(stream_state *s, const char *code, const char *message)
{
    json_t *e = json_pack("{s:s}", "code", code);
    if (e != NULL)
        pc_json_set_text(e, "message", message);
    json_t *o = e ? json_pack("{s:o}", "error", e) : NULL;
    char *text = o ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(o);
    bool ok = text != NULL && put_envelope(s, END_STREAM, text, strlen(text));
    free(text);
    s->ended = true;
    return ok;
}

static bool stream_event(void *arg, const pc_sse_event *e)
{
    stream_state *s = arg;
    if (s->ended)
        return false;
    json_t *data = json_loads(e->data, 0, NULL);
    if (!json_is_object(data)) {
        json_decref(data);
        return true;
    }
    bool ok = true;
    if (strcmp(e->type, "cut") == 0 || strcmp(e->type, "compacted") == 0) {
        const char *why = json_string_value(json_object_get(data, "reason"));
        if (why == NULL)
            why = json_string_value(json_object_get(data, "message"));
        ok = put_end(s,
                     e->type[0] == 'c' && e->type[1] == 'u' ? "resource_exhausted" : "out_of_range",
                     why ? why : e->type);
    } else if (s->proto) {
        Popcast__V1__WatchEvent ev = POPCAST__V1__WATCH_EVENT__INIT;
        ev.id = strtoull(e->id, NULL, 10);
        ev.type = (char *)e->type;
        ev.data = pc_struct_from_json(data);
        size_t len = popcast__v1__watch_event__get_packed_size(&ev);
        uint8_t *buf = ev.data ? malloc(len ? len : 1) : NULL;
        if (buf != NULL) {
            popcast__v1__watch_event__pack(&ev, buf);
            ok = put_envelope(s, 0, buf, len);
        } else {
            ok = false;
        }
        free(buf);
        if (ev.data != NULL)
            google__protobuf__struct__free_unpacked(ev.data, NULL);
    } else {
        /* protobuf's JSON: a uint64 is a string. */
        json_t *o = json_pack("{s:s,s:s,s:O}", "id", e->id, "type", e->type, "data", data);
        char *text = o ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
        json_decref(o);
        ok = text != NULL && put_envelope(s, 0, text, strlen(text));
        free(text);
    }
    json_decref(data);
    return ok;
}

static uint8_t *stream_transform(void *arg, const void *in, size_t len, size_t *out_len)
{
    stream_state *s = arg;
    s->out = NULL;
    s->len = s->cap = 0;
    if (!s->ended && !pc_sse_feed(&s->sse, in, len, stream_event, s) && !s->ended) {
        free(s->out);
        return NULL;
    }
    *out_len = s->len;
    /* Nothing to send (a keepalive comment): an empty allocation. */
    uint8_t *out = s->out ? s->out : malloc(1);
    s->out = NULL;
    return out;
}

static void stream_release(void *arg)
{
    stream_state *s = arg;
    pc_sse_free(&s->sse);
    free(s->out);
    free(s);
}

/* A stream the REST route refused before it started: 200 and the
 * end-of-stream message with the error, as Connect streams end. */
static void stream_refused(void *arg, uint16_t status, const char *content_type, const void *body,
                           size_t len, const char *const *headers)
{
    stream_state *st = arg; /* released after this, with the inner request */
    pc_httpd_req *rq = st->outer;
    bool proto = st->proto;
    (void)content_type;
    (void)headers;
    json_t *doc = json_loadb(body, len, 0, NULL);
    json_t *e = json_object_get(doc, "error");
    stream_state s = {.proto = proto};
    put_end(&s, pc_connect_code(json_string_value(json_object_get(e, "code")), status),
            json_string_value(json_object_get(e, "message"))
                ? json_string_value(json_object_get(e, "message"))
                : "refused");
    json_decref(doc);
    if (s.out == NULL)
        reply_error(rq, "resource_exhausted", "out of memory", NULL);
    else
        pc_httpd_reply(rq, 200, proto ? "application/connect+proto" : "application/connect+json",
                       s.out, s.len, NULL);
    free(s.out);
}

typedef struct body_ctx {
    const method *m;
    bool proto;
} body_ctx;

static void body_read(void *arg, pc_httpd_req *rq, int rc, uint8_t *body, size_t len)
{
    body_ctx *b = arg;
    const method *m = b->m;
    bool proto = b->proto;
    free(b);
    if (rc != 0)
        return; /* answered already (too large, no length) */
    char why[256] = "out of memory";
    if (m->stream) {
        /* One enveloped request message: flags, length, the message. */
        size_t n = len >= 5 ? (size_t)body[1] << 24 | (size_t)body[2] << 16 | (size_t)body[3] << 8 |
                                  body[4]
                            : 0;
        if (len < 5 || n != len - 5 || (body[0] & 0x01) != 0) {
            bool compressed = len >= 5 && (body[0] & 0x01);
            free(body);
            reply_error(rq, "invalid_argument",
                        compressed ? "compressed messages are not read: send them uncompressed"
                                   : "a stream's request is one enveloped message (flags, length, "
                                     "message)",
                        NULL);
            return;
        }
        memmove(body, body + 5, n);
        len = n;
        body[len] = '\0';
    }
    call_fields f = {.values = json_object()};
    int frc = f.values == NULL ? PC_E_NOMEM
              : proto          ? from_proto(m->request, body, len, &f, why, sizeof(why))
                               : from_json(m->request, body, len, &f, why, sizeof(why));
    free(body);
    char target[2048];
    if (frc == PC_OK)
        frc = rest_target(m, f.values, target, sizeof(target), why, sizeof(why));
    if (frc != PC_OK) {
        reply_error(rq, "invalid_argument", why, NULL);
        json_decref(f.values);
        free(f.bundle);
        return;
    }
    /* The REST body: the JSON document, or the bundle. */
    char *text = NULL;
    const void *rest_body = NULL;
    size_t rest_len = 0;
    const char *ctype = NULL;
    json_t *doc = json_object_get(f.values, "body");
    if (doc != NULL) {
        text = json_dumps(doc, JSON_COMPACT);
        rest_body = text;
        rest_len = text ? strlen(text) : 0;
        ctype = "application/json";
    } else if (f.bundle != NULL) {
        rest_body = f.bundle;
        rest_len = f.bundle_len;
        const char *given = json_string_value(json_object_get(f.values, "content_type"));
        ctype = given && given[0] ? given : "text/x-lua";
    }
    call *c = m->stream ? NULL : calloc(1, sizeof(*c));
    stream_state *st = m->stream ? calloc(1, sizeof(*st)) : NULL;
    if ((c == NULL && st == NULL) || (doc != NULL && text == NULL)) {
        free(c);
        free(st);
        reply_error(rq, "resource_exhausted", "out of memory", NULL);
    } else if (st != NULL) {
        st->outer = rq;
        st->proto = proto;
        pc_httpd_stream_filter filter = {.content_type = proto ? "application/connect+proto"
                                                               : "application/connect+json",
                                         .transform = stream_transform,
                                         .release = stream_release,
                                         .arg = st};
        if (pc_httpd_inner_call(rq, m->http_method, target, ctype, rest_body, rest_len,
                                stream_refused, st, &filter) != PC_OK) {
            free(st);
            reply_error(rq, "resource_exhausted", "out of memory", NULL);
        }
    } else {
        c->outer = rq;
        c->proto = proto;
        if (pc_httpd_inner_call(rq, m->http_method, target, ctype, rest_body, rest_len, answered, c,
                                NULL) != PC_OK) {
            free(c);
            reply_error(rq, "resource_exhausted", "out of memory", NULL);
        }
    }
    free(text);
    json_decref(f.values);
    free(f.bundle);
}

void pc_connect_serve(pc_httpd_req *rq, size_t max_body)
{
    const method *m = find_method(pc_httpd_target(rq));
    if (m == NULL) {
        reply_error(rq, "unimplemented", "no such method (proto/popcast_api.proto)", NULL);
        return;
    }
    if (strcmp(pc_httpd_method(rq), "POST") != 0) {
        static const char text[] =
            "{\"code\":\"invalid_argument\",\"message\":\"Connect calls are POST\"}";
        const char *allow[] = {"Allow", "POST", NULL};
        pc_httpd_reply(rq, 405, "application/json", text, sizeof(text) - 1, allow);
        return;
    }
    const char *version = pc_httpd_header(rq, "Connect-Protocol-Version");
    if (version != NULL && strcmp(version, "1") != 0) {
        reply_error(rq, "invalid_argument", "Connect-Protocol-Version must be 1", NULL);
        return;
    }
    const char *ctype = pc_httpd_header(rq, "Content-Type");
    size_t clen = ctype ? strcspn(ctype, "; ") : 0;
    const char *want_json = m->stream ? "application/connect+json" : "application/json";
    const char *want_proto = m->stream ? "application/connect+proto" : "application/proto";
    bool json = ctype && clen == strlen(want_json) && strncasecmp(ctype, want_json, clen) == 0;
    bool proto = ctype && clen == strlen(want_proto) && strncasecmp(ctype, want_proto, clen) == 0;
    if (m->stream && !json && !proto) {
        static const char text[] = "{\"code\":\"invalid_argument\",\"message\":\"a stream's "
                                   "Content-Type is application/connect+json or "
                                   "application/connect+proto\"}";
        const char *accept[] = {"Accept-Post",
                                "application/connect+json, application/connect+proto", NULL};
        pc_httpd_reply(rq, 415, "application/json", text, sizeof(text) - 1, accept);
        return;
    }
    if (!json && !proto) {
        /* The protocol's answer to a codec it does not serve: 415, and
         * what it does take. */
        static const char text[] = "{\"code\":\"invalid_argument\",\"message\":\"Content-Type must "
                                   "be application/json or application/proto\"}";
        const char *accept[] = {"Accept-Post", "application/json, application/proto", NULL};
        pc_httpd_reply(rq, 415, "application/json", text, sizeof(text) - 1, accept);
        return;
    }
    body_ctx *b = malloc(sizeof(*b));
    if (b == NULL) {
        reply_error(rq, "resource_exhausted", "out of memory", NULL);
        return;
    }
    b->m = m;
    b->proto = proto;
    pc_httpd_read_body(rq, max_body, body_read, b);
}
