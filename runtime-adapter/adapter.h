/* adapter.h - the runtime adapter interface: how an agent makes a verified,
 * stored version of a tenant's code live, whatever runs it.
 *
 * Lifecycle of a version in an adapter:
 *   prepare   off the request path: build everything needed to serve it
 *             (for Lua: load the bundle, run its top level, keep a warm
 *             isolate). A failure reports a clear error and changes nothing
 *             that is being served.
 *   activate  atomically make a prepared version the tenant's live one:
 *             requests that start afterwards see it; requests in flight
 *             finish on the version they started on, which is freed when
 *             its last request ends.
 *   discard   drop a prepared version that will not be activated.
 *   deactivate stop serving a tenant (it was deleted).
 *
 * Adapters whose runtime serves requests in-process (Lua) implement serve;
 * adapters that hand the code to an external runtime (dir/exec) leave it
 * NULL. All operations are thread safe; serve may run on many threads at
 * once, and never enters one isolate from two threads. */
#ifndef PC_ADAPTER_H
#define PC_ADAPTER_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "names.h"

/* What the agent knows about a version when it asks an adapter to prepare
 * it. The adapter copies whatever it keeps: the pointers are only valid for
 * the duration of the call. */
typedef struct pc_version_spec {
    const char *tenant;
    uint64_t version;
    uint64_t seq;
    const char *runtime;    /* adapter name from the manifest */
    const char *entrypoint; /* path inside the bundle archive */
    const uint8_t *bundle;  /* the bundle archive bytes (see common/bundle.h) */
    size_t bundle_len;
    const uint8_t *hash; /* BLAKE2b-256 of bundle, PC_HASH_LEN bytes */
    /* This agent made the version live before (a restart): prepare may
     * leave running its code until the first request, so that an agent
     * with many tenants serves without building each first. If the code
     * then fails to load, the version is quarantined with the reason
     * (it serves nothing, and reports say so). Adapters may ignore it. */
    bool deferred;
} pc_version_spec;

typedef struct pc_header {
    char *name; /* lower case */
    char *value;
} pc_header;

/* One request to a tenant's code. All pointers are borrowed. */
typedef struct pc_request {
    const char *method;
    const char *path;  /* without the query string */
    const char *query; /* "" when none */
    const pc_header *headers;
    size_t n_headers;
    const uint8_t *body;
    size_t body_len;
    /* Where the handler's print(...) output goes, one call per print with
     * its line (no newline; at most PC_PRINT_LINE_MAX bytes, longer lines
     * are cut), on the serving thread during serve. NULL: discarded. */
    void (*print)(void *arg, const char *line, size_t len);
    void *print_arg;
} pc_request;

#define PC_PRINT_LINE_MAX 1024

/* The handler's answer. Filled by serve with malloc'd memory; release it
 * with pc_response_clear. */
typedef struct pc_response {
    int status;
    pc_header *headers;
    size_t n_headers;
    uint8_t *body;
    size_t body_len;
    uint64_t version; /* the version that produced this response */
} pc_response;

void pc_response_clear(pc_response *res);

/* A live version an adapter stopped serving because it misbehaved past
 * every limit (Lua: a run still going past the watchdog's ceiling). It
 * lasts until the tenant's next version goes live. */
typedef struct pc_quarantine {
    char tenant[PC_TENANT_MAX + 1];
    uint64_t version;
    char reason[160]; /* e.g. "a request ran past the 4000 ms ceiling" */
} pc_quarantine;

typedef struct pc_prepared pc_prepared; /* adapter specific */
typedef struct pc_adapter pc_adapter;

struct pc_adapter {
    const char *name; /* matches Manifest.runtime */

    /* Controller-side validation of an upload: can this runtime parse the
     * bundle? Must not run tenant code. */
    int (*check)(pc_adapter *a, const pc_version_spec *spec, pc_err *err);
    int (*prepare)(pc_adapter *a, const pc_version_spec *spec, pc_prepared **out, pc_err *err);
    /* Takes ownership of p, on success and on failure. */
    int (*activate)(pc_adapter *a, pc_prepared *p, pc_err *err);
    void (*discard)(pc_adapter *a, pc_prepared *p);
    int (*deactivate)(pc_adapter *a, const char *tenant, pc_err *err);
    /* PC_E_NOTFOUND: no live version. PC_E_RUNTIME: the handler failed
     * (err has its message). PC_E_LIMIT: a sandbox limit stopped it.
     * PC_E_QUARANTINED: the live version is quarantined (err says why);
     * nothing ran. */
    int (*serve)(pc_adapter *a, const char *tenant, const pc_request *req, pc_response *res,
                 pc_err *err);
    /* The tenant's live version, 0 when none. */
    uint64_t (*live_version)(pc_adapter *a, const char *tenant);
    /* Optional (NULL: this adapter cannot split a tenant's traffic, and
     * the agent makes such a version wholly live). Takes ownership of p,
     * on success and on failure: p becomes the tenant's second version,
     * running permille per mille of its requests, chosen by the value of
     * key in each request (a header name, or "cookie:" and a cookie name;
     * a request without it is chosen at random: common/target.h); the live
     * version runs the rest. A later activate or deactivate ends it. */
    int (*activate_split)(pc_adapter *a, pc_prepared *p, unsigned permille, const char *key,
                          pc_err *err);
    /* Optional: the version a split sends requests to (0: none). */
    uint64_t (*split_version)(pc_adapter *a, const char *tenant);
    /* Optional (NULL: this adapter never quarantines). The quarantined
     * live versions: fills up to max into out, returns how many there are
     * (possibly more than max). Thread safe. */
    size_t (*quarantined)(pc_adapter *a, pc_quarantine *out, size_t max);
    void (*destroy)(pc_adapter *a);
};

#endif
