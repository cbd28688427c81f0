/* deployer.c - the leader's driver of staged deployments (see
 * deployer.h). */
#include "deployer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "deployment.h"
#include "envelope.h"
#include "gate.h"
#include "log.h"
#include "registry.h"
#include "target.h"

#define DEFAULT_INTERVAL_MS 1000

typedef struct busy_entry {
    char tenant[PC_TENANT_MAX + 1];
    uint64_t id;
} busy_entry;

struct pc_deployer {
    pc_deployer_options opt;
    int64_t last_ms;
    bool stopped;
    busy_entry *busy; /* deployments with a step in flight */
    size_t n_busy, cap_busy;
    size_t steps_in_flight; /* answers still to come (free waits for none) */
};

typedef enum { STEP_STAGE, STEP_REVERT, STEP_RECORD } step_kind;

/* One step in flight: what its answer is about. */
typedef struct step {
    pc_deployer *d;
    step_kind kind;
    char tenant[PC_TENANT_MAX + 1];
    uint64_t id;
    uint32_t stage;
} step;

pc_deployer *pc_deployer_new(const pc_deployer_options *opt)
{
    pc_deployer *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return NULL;
    d->opt = *opt;
    if (d->opt.interval_ms == 0)
        d->opt.interval_ms = DEFAULT_INTERVAL_MS;
    return d;
}

void pc_deployer_stop(pc_deployer *d)
{
    if (d != NULL)
        d->stopped = true;
}

void pc_deployer_free(pc_deployer *d)
{
    if (d == NULL)
        return;
    free(d->busy);
    free(d);
}

static bool is_busy(pc_deployer *d, const char *tenant, uint64_t id)
{
    for (size_t i = 0; i < d->n_busy; i++)
        if (d->busy[i].id == id && strcmp(d->busy[i].tenant, tenant) == 0)
            return true;
    return false;
}

static bool set_busy(pc_deployer *d, const char *tenant, uint64_t id)
{
    if (d->n_busy == d->cap_busy) {
        size_t cap = d->cap_busy ? d->cap_busy * 2 : 8;
        busy_entry *grown = realloc(d->busy, cap * sizeof(*grown));
        if (grown == NULL)
            return false;
        d->busy = grown;
        d->cap_busy = cap;
    }
    snprintf(d->busy[d->n_busy].tenant, sizeof(d->busy[0].tenant), "%s", tenant);
    d->busy[d->n_busy++].id = id;
    return true;
}

static void clear_busy(pc_deployer *d, const char *tenant, uint64_t id)
{
    for (size_t i = 0; i < d->n_busy; i++)
        if (d->busy[i].id == id && strcmp(d->busy[i].tenant, tenant) == 0) {
            d->busy[i] = d->busy[--d->n_busy];
            return;
        }
}

static void step_done(pc_change *c, const pc_change_result *r);

/* Submits c as step s; on a refusal (queue full, not the leader any
 * more) the deployment is free again and the next tick tries again. */
static void submit(pc_deployer *d, pc_change *c, step *s)
{
    pc_err err;
    c->done = step_done;
    c->arg = s;
    if (d->stopped || pc_pipeline_submit(d->opt.pipeline, c, &err) != PC_OK) {
        if (!d->stopped)
            pc_warn("deployer", "deployment %llu of %s: step not taken: %s",
                    (unsigned long long)s->id, s->tenant, err.msg);
        clear_busy(d, s->tenant, s->id);
        pc_change_free(c);
        free(s);
        return;
    }
    d->steps_in_flight++;
}

static step *step_new(pc_deployer *d, step_kind kind, const char *tenant, uint64_t id,
                      uint32_t stage)
{
    step *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->d = d;
    s->kind = kind;
    snprintf(s->tenant, sizeof(s->tenant), "%s", tenant);
    s->id = id;
    s->stage = stage;
    return s;
}

/* Records op on the deployment (the pipeline applies it to the committed
 * record). The deployment stays busy until it is answered. */
static void record_op(pc_deployer *d, const char *tenant, uint64_t id, pc_deployment_op_kind kind,
                      uint32_t stage, uint64_t seq, const char *detail)
{
    pc_change *c = pc_change_new(PC_CHANGE_DEPLOYMENT, tenant);
    step *s = step_new(d, STEP_RECORD, tenant, id, stage);
    if (c == NULL || s == NULL) {
        pc_change_free(c);
        free(s);
        clear_busy(d, tenant, id);
        return;
    }
    c->u.deployment.id = id;
    c->u.deployment.op.kind = kind;
    c->u.deployment.op.stage = stage;
    c->u.deployment.op.seq = seq;
    snprintf(c->u.deployment.op.detail, sizeof(c->u.deployment.op.detail), "%s",
             detail ? detail : "");
    pc_info("deployer", "deployment %llu of %s, stage %u: %s%s%s", (unsigned long long)id, tenant,
            stage + 1, pc_deployment_op_name(kind), detail && detail[0] ? ": " : "",
            detail ? detail : "");
    submit(d, c, s);
}

static void step_done(pc_change *c, const pc_change_result *r)
{
    step *s = c->arg;
    pc_deployer *d = s->d;
    d->steps_in_flight--;
    bool again = false;
    if (!d->stopped && s->kind == STEP_STAGE && r->rc == PC_OK) {
        record_op(d, s->tenant, s->id, PC_DEPLOYMENT_STAGED, s->stage, r->seq, "");
        again = true;
    } else if (!d->stopped && s->kind == STEP_STAGE &&
               (r->rc == PC_E_STALE_VERSION || r->rc == PC_E_NOTFOUND)) {
        record_op(d, s->tenant, s->id, PC_DEPLOYMENT_SUPERSEDED, s->stage, 0, r->err.msg);
        again = true;
    } else if (!d->stopped && s->kind == STEP_REVERT && r->rc == PC_OK) {
        char detail[96];
        snprintf(detail, sizeof(detail), "version %llu brings the baseline's content back",
                 (unsigned long long)r->version);
        record_op(d, s->tenant, s->id, PC_DEPLOYMENT_REVERTED, s->stage, r->seq, detail);
        again = true;
    } else if (r->rc != PC_OK && r->rc != PC_E_NOT_LEADER) {
        pc_warn("deployer", "deployment %llu of %s: %s step failed: %s", (unsigned long long)s->id,
                s->tenant,
                s->kind == STEP_STAGE    ? "stage"
                : s->kind == STEP_REVERT ? "revert"
                                         : "record",
                r->err.msg);
    }
    if (!again)
        clear_busy(d, s->tenant, s->id);
    free(s);
}

/* The first nacking agent's account, for the halt's reason. */
static void first_nack(json_t *doc, char *out, size_t cap)
{
    out[0] = '\0';
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(doc, "agents"), i, a)
    {
        const char *state = json_string_value(json_object_get(a, "state"));
        if (state == NULL || strcmp(state, "nacked") != 0)
            continue;
        const char *id = json_string_value(json_object_get(a, "agent_id")),
                   *reason = json_string_value(json_object_get(a, "reason")),
                   *detail = json_string_value(json_object_get(a, "detail"));
        snprintf(out, cap, "; %s: %s%s%.200s", id ? id : "?", reason ? reason : "",
                 detail && detail[0] ? ": " : "", detail ? detail : "");
        return;
    }
}

typedef struct names_nobody {
    const Popcast__DeploymentRecord *rec;
    pc_rollout *rollout;
    size_t agents;  /* enrolled, not revoked */
    bool undecided; /* the target names one, or its PoP is not known here */
} names_nobody;

static int check_enrolled(void *arg, const Popcast__AgentRecord *a)
{
    names_nobody *n = arg;
    if (a->revoked || a->agent_id == NULL)
        return 0;
    n->agents++;
    const Popcast__Target *t = n->rec->plan[n->rec->stage]->target;
    char pop[PC_ID_MAX + 1] = "";
    bool located = pc_rollout_agent_pop(n->rollout, a->agent_id, pop, sizeof(pop));
    if (pc_target_names(t, n->rec->tenant, n->rec->version, a->agent_id, pop) ||
        (!located && t != NULL && t->n_pops > 0))
        n->undecided = true;
    return n->undecided ? 1 : 0;
}

/* Whether the current stage's target names none of the agents enrolled
 * in the replicated store (a canary PoP without agents, 10 % of a fleet of
 * two): such a stage has nothing to make live, bake or judge, so it
 * passes. Judged against the enrolled agents, not against those that
 * reported to this leader: a leader elected a moment ago has heard from
 * few, and a target must not look empty because of that. An agent never
 * heard of here whose PoP a target might name keeps the stage waiting. */
static bool stage_names_nobody(pc_deployer *d, const Popcast__DeploymentRecord *rec,
                               size_t *enrolled)
{
    names_nobody n = {.rec = rec, .rollout = d->opt.rollout};
    pc_err err;
    if (pc_registry_foreach_agent(d->opt.store, check_enrolled, &n, &err) != PC_OK)
        return false;
    *enrolled = n.agents;
    return n.agents > 0 && !n.undecided;
}

/* Judges a started stage: failed, passed (true: a step is in flight), or
 * not yet (false). */
static bool judge(pc_deployer *d, const Popcast__DeploymentRecord *rec, int64_t now_ms)
{
    const Popcast__DeploymentStage *st = rec->plan[rec->stage];
    uint64_t vseq = 0;
    pc_store_version_seq(d->opt.store, rec->tenant, rec->version, &vseq, NULL);
    pc_rollout_query q = {.tenant = rec->tenant,
                          .version = rec->version,
                          .seq = vseq,
                          .fraction = 1.0,
                          .kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY,
                          .target = st->target};
    pc_rollout_summary sum;
    json_t *doc = pc_rollout_version_json(d->opt.rollout, &q, pc_mono_ms(), &sum);
    char detail[PC_DEPLOYMENT_DETAIL_MAX];
    size_t enrolled = 0;
    if (sum.total == 0 && stage_names_nobody(d, rec, &enrolled)) {
        json_decref(doc);
        snprintf(detail, sizeof(detail),
                 "its target names none of the %zu enrolled agents: nothing to bake or judge",
                 enrolled);
        record_op(d, rec->tenant, rec->id, PC_DEPLOYMENT_PASSED, rec->stage, 0, detail);
        return true;
    }
    if (sum.nacked > st->max_nacks) {
        char who[300];
        first_nack(doc, who, sizeof(who));
        snprintf(detail, sizeof(detail), "nacked on %zu of %zu targeted agents (at most %u)%s",
                 sum.nacked, sum.total, st->max_nacks, who);
        json_decref(doc);
        record_op(d, rec->tenant, rec->id, PC_DEPLOYMENT_FAILED, rec->stage, 0, detail);
        return true;
    }
    json_decref(doc);
    pc_gate_result g = {.verdict = PC_GATE_PASS};
    if (st->gate) {
        size_t n = pc_rollout_gate_samples(d->opt.rollout, rec->tenant, rec->version, rec->baseline,
                                           pc_mono_ms(), NULL, 0);
        pc_gate_sample *samples = calloc(n ? n : 1, sizeof(*samples));
        if (samples == NULL)
            return false;
        n = pc_rollout_gate_samples(d->opt.rollout, rec->tenant, rec->version, rec->baseline,
                                    pc_mono_ms(), samples, n);
        pc_gate_rule rule = pc_gate_default_rule();
        if (st->min_requests != 0)
            rule.min_requests = st->min_requests;
        pc_gate_judge(&rule, samples, n, &g);
        free(samples);
        if (g.verdict == PC_GATE_FAIL) {
            snprintf(detail, sizeof(detail), "health gate: %s", g.reason);
            record_op(d, rec->tenant, rec->id, PC_DEPLOYMENT_FAILED, rec->stage, 0, detail);
            return true;
        }
    }
    bool baked = now_ms - rec->stage_started_unix_ms >= (int64_t)st->bake_ms;
    bool judged = !st->gate || g.verdict == PC_GATE_PASS ||
                  (g.verdict == PC_GATE_WAIT && st->min_requests == 0);
    if (!sum.complete || !baked || !judged)
        return false;
    snprintf(detail, sizeof(detail), "live on %zu of %zu targeted agents after %.1f s; %s%s",
             sum.live, sum.total, (double)(now_ms - rec->stage_started_unix_ms) / 1000.0,
             !st->gate                   ? "no health gate"
             : g.verdict == PC_GATE_PASS ? "health gate passed: "
                                         : "health gate not judged (too few requests): ",
             st->gate ? g.reason : "");
    record_op(d, rec->tenant, rec->id, PC_DEPLOYMENT_PASSED, rec->stage, 0, detail);
    return true;
}

/* A halted deployment: its revert, unless it is made already (a leader
 * died between committing it and recording it) or something newer came. */
static void revert(pc_deployer *d, const Popcast__DeploymentRecord *rec, const pc_tenant_state *t)
{
    if (t->active_version > rec->version) {
        Popcast__Manifest *m = NULL;
        bool ours = pc_store_get_manifest(d->opt.store, t->active_seq, &m, NULL) == PC_OK &&
                    m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_ROLLBACK &&
                    m->rollback_of == rec->baseline && m->target == NULL;
        if (m != NULL)
            popcast__manifest__free_unpacked(m, NULL);
        if (ours)
            record_op(d, rec->tenant, rec->id, PC_DEPLOYMENT_REVERTED, rec->stage, t->active_seq,
                      "the revert was already made");
        else
            record_op(d, rec->tenant, rec->id, PC_DEPLOYMENT_SUPERSEDED, rec->stage, 0,
                      "a newer change of the tenant came before the revert");
        return;
    }
    pc_change *c = pc_change_new(PC_CHANGE_ROLLBACK, rec->tenant);
    step *s = step_new(d, STEP_REVERT, rec->tenant, rec->id, rec->stage);
    if (c == NULL || s == NULL) {
        pc_change_free(c);
        free(s);
        clear_busy(d, rec->tenant, rec->id);
        return;
    }
    c->u.rollback.to = rec->baseline;
    c->u.rollback.asked = rec->baseline;
    snprintf(c->author, sizeof(c->author), "%s", rec->author ? rec->author : "admin");
    snprintf(c->message, sizeof(c->message), "deployment %llu of version %llu halted: reverted",
             (unsigned long long)rec->id, (unsigned long long)rec->version);
    pc_info("deployer", "deployment %llu of %s: reverting to the content of version %llu",
            (unsigned long long)rec->id, rec->tenant, (unsigned long long)rec->baseline);
    submit(d, c, s);
}

/* The current stage's STAGE entry. */
static void start_stage(pc_deployer *d, const Popcast__DeploymentRecord *rec)
{
    pc_change *c = pc_change_new(PC_CHANGE_STAGE, rec->tenant);
    step *s = step_new(d, STEP_STAGE, rec->tenant, rec->id, rec->stage);
    const Popcast__Target *target = rec->plan[rec->stage]->target;
    if (c == NULL || s == NULL ||
        (target != NULL && (c->target = pc_target_copy(target)) == NULL)) {
        pc_change_free(c);
        free(s);
        clear_busy(d, rec->tenant, rec->id);
        return;
    }
    c->u.stage.version = rec->version;
    snprintf(c->author, sizeof(c->author), "%s", rec->author ? rec->author : "admin");
    snprintf(c->message, sizeof(c->message), "deployment %llu, stage %u of %zu",
             (unsigned long long)rec->id, rec->stage + 1, rec->n_plan);
    submit(d, c, s);
}

/* One step of one deployment, if it needs one. */
static void drive(pc_deployer *d, const Popcast__DeploymentRecord *rec, int64_t now_ms)
{
    if (pc_deployment_final(rec) || is_busy(d, rec->tenant, rec->id))
        return;
    pc_tenant_state t;
    if (pc_store_get_tenant(d->opt.store, rec->tenant, &t, NULL) != PC_OK)
        return;
    if (!set_busy(d, rec->tenant, rec->id))
        return;
    bool halted = rec->state == POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_HALTED;
    if (halted && !t.deleted) {
        revert(d, rec, &t);
    } else if (t.deleted || t.active_version != rec->version) {
        char detail[96];
        snprintf(detail, sizeof(detail), "%s", t.deleted ? "the tenant was deleted" : "");
        if (!t.deleted)
            snprintf(detail, sizeof(detail), "version %llu came",
                     (unsigned long long)t.active_version);
        record_op(d, rec->tenant, rec->id, PC_DEPLOYMENT_SUPERSEDED, rec->stage, 0, detail);
    } else if (rec->state != POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_RUNNING) {
        clear_busy(d, rec->tenant, rec->id); /* paused */
    } else if (rec->stage_seq == 0) {
        start_stage(d, rec);
    } else if (!judge(d, rec, now_ms)) {
        clear_busy(d, rec->tenant, rec->id);
    }
}

typedef struct open_records {
    Popcast__DeploymentRecord **items;
    size_t n, cap;
} open_records;

/* Copies every deployment that is not over (the walk, over the index of
 * open ones, frees its records). */
static int collect_open(void *arg, const Popcast__DeploymentRecord *rec)
{
    open_records *o = arg;
    if (pc_deployment_final(rec))
        return 0;
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 8;
        Popcast__DeploymentRecord **grown = realloc(o->items, cap * sizeof(*grown));
        if (grown == NULL)
            return 0;
        o->items = grown;
        o->cap = cap;
    }
    Popcast__DeploymentRecord *copy = pc_deployment_copy(rec);
    if (copy != NULL)
        o->items[o->n++] = copy;
    return 0;
}

void pc_deployer_tick(pc_deployer *d, int64_t now_ms)
{
    if (d == NULL || d->stopped || now_ms - d->last_ms < (int64_t)d->opt.interval_ms)
        return;
    d->last_ms = now_ms;
    if (d->opt.cluster != NULL && !pc_cluster_ready_to_write(d->opt.cluster))
        return;
    open_records o = {0};
    pc_err err;
    if (pc_registry_foreach_open_deployment(d->opt.store, collect_open, &o, &err) != PC_OK)
        pc_warn("deployer", "cannot read the deployments: %s", err.msg);
    for (size_t i = 0; i < o.n; i++) {
        drive(d, o.items[i], now_ms);
        popcast__deployment_record__free_unpacked(o.items[i], NULL);
    }
    free(o.items);
}
