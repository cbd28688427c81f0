/* applier.c - verify, store, make live (see applier.h). */
#include "applier.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "envelope.h"
#include "log.h"

#define NACK_RING 64

typedef struct nack {
    char tenant[PC_TENANT_MAX + 1];
    uint64_t version, seq;
    char reason[32];
    char detail[512];
    int64_t at_unix_ms;
} nack;

struct pc_applier {
    pc_applier_options opt;
    pthread_mutex_t lock; /* guards the nack ring */
    nack nacks[NACK_RING];
    size_t nack_next, nack_count;
    _Atomic uint64_t applied_seq;
    pc_metric *m_received, *m_applied, *m_live, *m_applied_seq;
};

static int64_t now_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void record_nack(pc_applier *a, const char *tenant, uint64_t version, uint64_t seq,
                        const char *reason, const char *detail)
{
    char labels[64];
    snprintf(labels, sizeof(labels), "reason=\"%s\"", reason);
    pc_metrics_inc(a->opt.metrics, "popcast_agent_nacks_total", labels);
    pthread_mutex_lock(&a->lock);
    nack *n = &a->nacks[a->nack_next];
    memset(n, 0, sizeof(*n));
    snprintf(n->tenant, sizeof(n->tenant), "%s", tenant ? tenant : "");
    n->version = version;
    n->seq = seq;
    snprintf(n->reason, sizeof(n->reason), "%s", reason);
    snprintf(n->detail, sizeof(n->detail), "%s", detail);
    n->at_unix_ms = now_unix_ms();
    a->nack_next = (a->nack_next + 1) % NACK_RING;
    if (a->nack_count < NACK_RING)
        a->nack_count++;
    pthread_mutex_unlock(&a->lock);
}

/* Counts and logs a refused entry. m is the verified manifest when the
 * refusal came after verification (then the controller hears a nack). */
static void refuse(pc_applier *a, int code, const Popcast__Manifest *m, const pc_err *err)
{
    char labels[64];
    snprintf(labels, sizeof(labels), "reason=\"%s\"", pc_err_name(code));
    pc_metrics_inc(a->opt.metrics, "popcast_agent_refused_total", labels);
    if (code == PC_E_DUPLICATE) {
        pc_debug("applier", "ignored seq %llu: already applied",
                 m ? (unsigned long long)m->seq : 0ULL);
        return;
    }
    if (m != NULL)
        pc_warn("applier", "refused %s version %llu seq %llu: %s (%s)", m->tenant,
                (unsigned long long)m->version, (unsigned long long)m->seq, pc_err_name(code),
                err->msg);
    else
        pc_warn("applier", "refused an entry: %s (%s)", pc_err_name(code), err->msg);
    if (code != PC_E_SEQ_GAP)
        record_nack(a, m ? m->tenant : "", m ? m->version : 0, m ? m->seq : 0, pc_err_name(code),
                    err->msg);
}

static pc_adapter *find_adapter(pc_applier *a, const char *runtime)
{
    for (size_t i = 0; i < a->opt.n_adapters; i++)
        if (strcmp(a->opt.adapters[i]->name, runtime) == 0)
            return a->opt.adapters[i];
    return NULL;
}

/* Prepares and swaps in one version; on success records it as live. */
static int make_live(pc_applier *a, const Popcast__Manifest *m, const uint8_t *bundle, size_t len,
                     pc_err *err)
{
    pc_adapter *ad = find_adapter(a, m->runtime);
    if (ad == NULL)
        return pc_err_set(err, PC_E_RUNTIME, "this agent has no runtime named '%s'", m->runtime);
    pc_version_spec spec = {.tenant = m->tenant,
                            .version = m->version,
                            .seq = m->seq,
                            .runtime = m->runtime,
                            .entrypoint = m->entrypoint,
                            .bundle = bundle,
                            .bundle_len = len,
                            .hash = m->bundle_hash.data};
    pc_prepared *p = NULL;
    int rc = ad->prepare(ad, &spec, &p, err);
    if (rc != PC_OK)
        return rc;
    /* A tenant lives in one adapter: moving runtimes retires the old one. */
    for (size_t i = 0; i < a->opt.n_adapters; i++)
        if (a->opt.adapters[i] != ad &&
            a->opt.adapters[i]->live_version(a->opt.adapters[i], m->tenant) != 0)
            a->opt.adapters[i]->deactivate(a->opt.adapters[i], m->tenant, NULL);
    if ((rc = ad->activate(ad, p, err)) != PC_OK)
        return rc;
    pc_metric_add(a->m_live, 1);
    pc_err serr;
    if (pc_store_set_live(a->opt.store, m->tenant, m->version, &serr) != PC_OK)
        pc_warn("applier", "%s version %llu is live but not recorded as live: %s", m->tenant,
                (unsigned long long)m->version, serr.msg);
    return PC_OK;
}

static void take_down(pc_applier *a, const char *tenant)
{
    for (size_t i = 0; i < a->opt.n_adapters; i++)
        a->opt.adapters[i]->deactivate(a->opt.adapters[i], tenant, NULL);
    pc_err serr;
    if (pc_store_set_live(a->opt.store, tenant, 0, &serr) != PC_OK)
        pc_warn("applier", "%s: cannot record that nothing is live: %s", tenant, serr.msg);
}

int pc_applier_apply_entry(pc_applier *a, const Popcast__Entry *e, pc_err *err)
{
    Popcast__Manifest *m = NULL;
    pc_metric_add(a->m_received, 1);
    int rc = pc_envelope_verify_entry(a->opt.trusted, e, a->opt.max_bundle, &m, err);
    if (rc != PC_OK) {
        refuse(a, rc, NULL, err);
        return rc;
    }
    if (e->bundle_omitted && pc_manifest_has_content(m)) {
        rc = pc_err_set(err, PC_E_INVALID, "entry announces a bundle without carrying it");
        refuse(a, rc, m, err);
        goto out;
    }
    const uint8_t *bundle = pc_manifest_has_content(m) ? e->bundle.data : NULL;
    size_t bundle_len = pc_manifest_has_content(m) ? e->bundle.len : 0;
    rc = pc_store_apply(a->opt.store, e->signed_, m, bundle, bundle_len, err);
    if (rc != PC_OK) {
        refuse(a, rc, m, err);
        goto out;
    }
    atomic_store(&a->applied_seq, m->seq);
    pc_metric_add(a->m_applied, 1);
    pc_metric_set(a->m_applied_seq, m->seq);
    switch (m->kind) {
    case POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY:
    case POPCAST__ENTRY_KIND__ENTRY_KIND_ROLLBACK: {
        pc_err lerr;
        if (make_live(a, m, bundle, bundle_len, &lerr) != PC_OK) {
            pc_warn("applier", "%s version %llu stored but not live: %s", m->tenant,
                    (unsigned long long)m->version, lerr.msg);
            record_nack(a, m->tenant, m->version, m->seq, pc_err_name(lerr.code), lerr.msg);
        } else {
            pc_info("applier", "%s version %llu (seq %llu) is live", m->tenant,
                    (unsigned long long)m->version, (unsigned long long)m->seq);
        }
        break;
    }
    case POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE:
        take_down(a, m->tenant);
        pc_info("applier", "%s deleted at version %llu (seq %llu)", m->tenant,
                (unsigned long long)m->version, (unsigned long long)m->seq);
        break;
    default: break;
    }
    rc = PC_OK;
out:
    popcast__manifest__free_unpacked(m, NULL);
    return rc;
}

void pc_applier_on_publication(pc_applier *a, const uint8_t *data, size_t len)
{
    Popcast__Publication *pub = popcast__publication__unpack(NULL, len, data);
    pc_err err;
    if (pub == NULL) {
        pc_err_set(&err, PC_E_INVALID, "undecodable message of %zu bytes", len);
        refuse(a, PC_E_INVALID, NULL, &err);
        return;
    }
    switch (pub->body_case) {
    case POPCAST__PUBLICATION__BODY_ENTRY: (void)pc_applier_apply_entry(a, pub->entry, &err); break;
    case POPCAST__PUBLICATION__BODY_HEARTBEAT:
        break; /* heartbeats drive catch-up and freshness (docs/protocol.md) */
    default:
        pc_err_set(&err, PC_E_INVALID, "message with no known body");
        refuse(a, PC_E_INVALID, NULL, &err);
        break;
    }
    popcast__publication__free_unpacked(pub, NULL);
}

/* Startup. */

typedef struct load_walk {
    pc_applier *a;
    size_t live;
} load_walk;

static int load_version(pc_applier *a, const char *tenant, uint64_t version, pc_err *err)
{
    uint64_t seq = 0;
    Popcast__LogRecord *rec = NULL;
    Popcast__Manifest *m = NULL;
    uint8_t *bundle = NULL;
    size_t len = 0;
    int rc = pc_store_version_seq(a->opt.store, tenant, version, &seq, err);
    if (rc == PC_OK)
        rc = pc_store_get_log(a->opt.store, seq, &rec, err);
    if (rc == PC_OK) {
        /* Verified before it was stored; the key that signed it may have
         * rotated since, so it is not verified again. */
        m = rec->signed_ ? popcast__manifest__unpack(NULL, rec->signed_->manifest.len,
                                                     rec->signed_->manifest.data)
                         : NULL;
        if (m == NULL)
            rc = pc_err_set(err, PC_E_STORE, "stored manifest of seq %llu does not decode",
                            (unsigned long long)seq);
    }
    if (rc == PC_OK)
        rc = pc_store_get_blob(a->opt.store, m->bundle_hash.data, &bundle, &len, err);
    if (rc == PC_OK)
        rc = make_live(a, m, bundle, len, err);
    free(bundle);
    if (m)
        popcast__manifest__free_unpacked(m, NULL);
    if (rec)
        popcast__log_record__free_unpacked(rec, NULL);
    return rc;
}

static int load_tenant(void *arg, const pc_tenant_state *t)
{
    load_walk *w = arg;
    pc_applier *a = w->a;
    if (t->active_version == 0)
        return 0;
    pc_err err;
    if (load_version(a, t->tenant, t->active_version, &err) == PC_OK) {
        w->live++;
        return 0;
    }
    pc_warn("applier", "%s version %llu does not load at startup: %s", t->tenant,
            (unsigned long long)t->active_version, err.msg);
    record_nack(a, t->tenant, t->active_version, t->active_seq, pc_err_name(err.code), err.msg);
    if (t->live_version != 0 && t->live_version != t->active_version) {
        if (load_version(a, t->tenant, t->live_version, &err) == PC_OK) {
            pc_info("applier", "%s serves its last live version %llu", t->tenant,
                    (unsigned long long)t->live_version);
            w->live++;
        } else {
            pc_error("applier", "%s: last live version %llu does not load either: %s", t->tenant,
                     (unsigned long long)t->live_version, err.msg);
        }
    }
    return 0;
}

size_t pc_applier_load(pc_applier *a)
{
    load_walk w = {a, 0};
    pc_err err;
    if (pc_store_foreach_tenant(a->opt.store, load_tenant, &w, &err) != PC_OK)
        pc_error("applier", "cannot read tenants from the store: %s", err.msg);
    return w.live;
}

int pc_applier_new(pc_applier **out, const pc_applier_options *opt, pc_err *err)
{
    pc_applier *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    a->opt = *opt;
    pthread_mutex_init(&a->lock, NULL);
    uint64_t applied = 0;
    int rc = pc_store_applied_seq(opt->store, &applied, err);
    if (rc != PC_OK) {
        pthread_mutex_destroy(&a->lock);
        free(a);
        return rc;
    }
    atomic_store(&a->applied_seq, applied);
    a->m_received = pc_metrics_counter(opt->metrics, "popcast_agent_entries_received_total", NULL,
                                       "entries received (pub/sub and catch-up)");
    a->m_applied = pc_metrics_counter(opt->metrics, "popcast_agent_entries_applied_total", NULL,
                                      "entries stored durably");
    a->m_live = pc_metrics_counter(opt->metrics, "popcast_agent_activations_total", NULL,
                                   "versions made live");
    a->m_applied_seq =
        pc_metrics_gauge(opt->metrics, "popcast_agent_applied_seq", NULL, "last applied seq");
    pc_metric_set(a->m_applied_seq, applied);
    *out = a;
    return PC_OK;
}

void pc_applier_free(pc_applier *a)
{
    if (a == NULL)
        return;
    pthread_mutex_destroy(&a->lock);
    free(a);
}

uint64_t pc_applier_applied_seq(pc_applier *a)
{
    return atomic_load(&a->applied_seq);
}

/* Status. */

static json_t *hex_hash(const uint8_t *h)
{
    char hex[PC_HEX_HASH_LEN];
    pc_hex(hex, h, PC_HASH_LEN);
    return json_string(hex);
}

static int tenant_status(void *arg, const pc_tenant_state *t)
{
    json_t *list = arg;
    json_t *o =
        json_pack("{s:s,s:I,s:I,s:I,s:b}", "tenant", t->tenant, "applied_version",
                  (json_int_t)t->active_version, "live_version", (json_int_t)t->live_version,
                  "last_version", (json_int_t)t->last_version, "deleted", t->deleted);
    if (o != NULL && t->active_version != 0)
        json_object_set_new(o, "applied_hash", hex_hash(t->active_hash));
    if (o != NULL && t->live_version != 0)
        json_object_set_new(o, "live_hash", hex_hash(t->live_hash));
    json_array_append_new(list, o);
    return 0;
}

json_t *pc_applier_status_json(pc_applier *a)
{
    json_t *tenants = json_array();
    pc_store_foreach_tenant(a->opt.store, tenant_status, tenants, NULL);
    json_t *nacks = json_array();
    pthread_mutex_lock(&a->lock);
    for (size_t i = 0; i < a->nack_count; i++) {
        /* Oldest first. */
        size_t idx = (a->nack_next + NACK_RING - a->nack_count + i) % NACK_RING;
        const nack *n = &a->nacks[idx];
        json_array_append_new(nacks, json_pack("{s:s,s:I,s:I,s:s,s:s,s:I}", "tenant", n->tenant,
                                               "version", (json_int_t)n->version, "seq",
                                               (json_int_t)n->seq, "reason", n->reason, "detail",
                                               n->detail, "at_unix_ms", (json_int_t)n->at_unix_ms));
    }
    pthread_mutex_unlock(&a->lock);
    return json_pack("{s:I,s:o,s:o}", "applied_seq", (json_int_t)atomic_load(&a->applied_seq),
                     "tenants", tenants, "nacks", nacks);
}
