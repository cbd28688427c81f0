/* deployment.c - a staged deployment's record (see deployment.h). */
#include "deployment.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_text.h"
#include "names.h"
#include "target.h"

#define BAKE_MAX_MS      (7ull * 24 * 3600 * 1000)
#define MIN_REQUESTS_MAX 1000000000ull

const char *pc_deployment_state_name(Popcast__DeploymentState s)
{
    switch (s) {
    case POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_RUNNING: return "running";
    case POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_PAUSED: return "paused";
    case POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_HALTED: return "halted";
    case POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_COMPLETE: return "complete";
    case POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_REVERTED: return "reverted";
    case POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_SUPERSEDED: return "superseded";
    case POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_ABORTED: return "aborted";
    default: return "unknown";
    }
}

static const char *const op_names[PC_DEPLOYMENT_OP_COUNT] = {
    [PC_DEPLOYMENT_STAGED] = "staged",         [PC_DEPLOYMENT_PASSED] = "passed",
    [PC_DEPLOYMENT_FAILED] = "failed",         [PC_DEPLOYMENT_REVERTED] = "reverted",
    [PC_DEPLOYMENT_SUPERSEDED] = "superseded", [PC_DEPLOYMENT_PAUSE] = "paused",
    [PC_DEPLOYMENT_RESUME] = "resumed",        [PC_DEPLOYMENT_ABORT] = "aborted",
    [PC_DEPLOYMENT_PROMOTE] = "promoted",
};

const char *pc_deployment_op_name(pc_deployment_op_kind k)
{
    return (unsigned)k < PC_DEPLOYMENT_OP_COUNT ? op_names[k] : "unknown";
}

bool pc_deployment_final(const Popcast__DeploymentRecord *d)
{
    switch (d->state) {
    case POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_COMPLETE:
    case POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_REVERTED:
    case POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_SUPERSEDED:
    case POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_ABORTED: return true;
    /* Halted with nothing to go back to: it stays where it stopped. */
    case POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_HALTED: return d->baseline == 0;
    default: return false;
    }
}

static bool known_state(Popcast__DeploymentState s)
{
    return strcmp(pc_deployment_state_name(s), "unknown") != 0;
}

/* Whether two messages pack to the same bytes. */
static bool same_message(const ProtobufCMessage *a, const ProtobufCMessage *b)
{
    size_t la = protobuf_c_message_get_packed_size(a), lb = protobuf_c_message_get_packed_size(b);
    if (la != lb)
        return false;
    uint8_t *ba = malloc(la ? la : 1), *bb = malloc(lb ? lb : 1);
    bool same = ba != NULL && bb != NULL;
    if (same) {
        protobuf_c_message_pack(a, ba);
        protobuf_c_message_pack(b, bb);
        same = memcmp(ba, bb, la) == 0;
    }
    free(ba);
    free(bb);
    return same;
}

static bool same_text(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

int pc_deployment_check_new(const Popcast__DeploymentRecord *d, pc_err *err)
{
    if (d->tenant == NULL || !pc_tenant_name_valid(d->tenant) || d->id == 0 || d->version == 0)
        return pc_err_set(err, PC_E_INVALID, "a deployment needs a tenant, an id and a version");
    if (d->baseline >= d->version)
        return pc_err_set(err, PC_E_INVALID, "a deployment's baseline is an earlier version");
    if (d->state != POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_RUNNING || d->stage != 0 ||
        d->stage_seq != 0 || d->revert_seq != 0)
        return pc_err_set(err, PC_E_INVALID, "a deployment starts running, at its first stage");
    if (d->n_events != 1 || !same_text(d->events[0]->what, "started"))
        return pc_err_set(err, PC_E_INVALID, "a deployment starts with one event: started");
    return pc_deployment_check_plan(d->plan, d->n_plan, err);
}

int pc_deployment_check_plan(Popcast__DeploymentStage *const *plan, size_t n, pc_err *err)
{
    if (n < 1 || n > PC_DEPLOYMENT_MAX_STAGES)
        return pc_err_set(err, PC_E_INVALID, "a plan has 1 to %d stages", PC_DEPLOYMENT_MAX_STAGES);
    for (size_t i = 0; i < n; i++) {
        const Popcast__DeploymentStage *s = plan[i];
        int rc = pc_target_check(s->target, err);
        if (rc != PC_OK) {
            pc_err_wrap(err, "stage %zu", i + 1);
            return rc;
        }
        if (s->bake_ms > BAKE_MAX_MS || s->min_requests > MIN_REQUESTS_MAX)
            return pc_err_set(err, PC_E_INVALID,
                              "stage %zu: bake_ms at most a week, min_requests at most 10^9",
                              i + 1);
    }
    return PC_OK;
}

int pc_deployment_check_update(const Popcast__DeploymentRecord *cur,
                               const Popcast__DeploymentRecord *next, pc_err *err)
{
    if (pc_deployment_final(cur))
        return pc_err_set(err, PC_E_INVALID, "deployment %llu of %s is %s: it never changes",
                          (unsigned long long)cur->id, cur->tenant,
                          pc_deployment_state_name(cur->state));
    if (!same_text(cur->tenant, next->tenant) || cur->id != next->id ||
        cur->version != next->version || cur->baseline != next->baseline ||
        !same_text(cur->author, next->author) || cur->created_unix_ms != next->created_unix_ms ||
        cur->immediate != next->immediate || cur->n_plan != next->n_plan)
        return pc_err_set(err, PC_E_INVALID, "what a deployment asked for never changes");
    for (size_t i = 0; i < cur->n_plan; i++)
        if (!same_message(&cur->plan[i]->base, &next->plan[i]->base))
            return pc_err_set(err, PC_E_INVALID, "a deployment's plan never changes");
    if (next->n_events < cur->n_events)
        return pc_err_set(err, PC_E_INVALID, "a deployment's events are never dropped");
    for (size_t i = 0; i < cur->n_events; i++)
        if (!same_message(&cur->events[i]->base, &next->events[i]->base))
            return pc_err_set(err, PC_E_INVALID, "a deployment's events are never rewritten");
    if (next->stage < cur->stage || next->stage >= next->n_plan)
        return pc_err_set(err, PC_E_INVALID, "a deployment's stage only moves forward");
    if (!known_state(next->state))
        return pc_err_set(err, PC_E_INVALID, "unknown deployment state %d", (int)next->state);
    return PC_OK;
}

static char *dup_text(const char *s)
{
    return strdup(s ? s : "");
}

int pc_deployment_add_event(Popcast__DeploymentRecord *d, int64_t at_ms, const char *what,
                            uint32_t stage, uint64_t seq, const char *detail)
{
    Popcast__DeploymentEvent *e = malloc(sizeof(*e));
    Popcast__DeploymentEvent **grown = realloc(d->events, (d->n_events + 1) * sizeof(*grown));
    if (grown != NULL)
        d->events = grown;
    if (e == NULL || grown == NULL) {
        free(e);
        return PC_E_NOMEM;
    }
    popcast__deployment_event__init(e);
    e->at_unix_ms = at_ms;
    e->stage = stage;
    e->seq = seq;
    e->what = dup_text(what);
    e->detail = dup_text(detail);
    if (e->what == NULL || e->detail == NULL) {
        popcast__deployment_event__free_unpacked(e, NULL);
        return PC_E_NOMEM;
    }
    d->events[d->n_events++] = e;
    return PC_OK;
}

int pc_deployment_copy_plan(Popcast__DeploymentRecord *d, Popcast__DeploymentStage *const *plan,
                            size_t n)
{
    Popcast__DeploymentStage **copy = calloc(n ? n : 1, sizeof(*copy));
    if (copy == NULL)
        return PC_E_NOMEM;
    for (size_t i = 0; i < n; i++) {
        size_t len = popcast__deployment_stage__get_packed_size(plan[i]);
        uint8_t *buf = malloc(len ? len : 1);
        if (buf != NULL) {
            popcast__deployment_stage__pack(plan[i], buf);
            copy[i] = popcast__deployment_stage__unpack(NULL, len, buf);
            free(buf);
        }
        if (copy[i] == NULL) {
            for (size_t j = 0; j < i; j++)
                popcast__deployment_stage__free_unpacked(copy[j], NULL);
            free(copy);
            return PC_E_NOMEM;
        }
    }
    d->plan = copy;
    d->n_plan = n;
    return PC_OK;
}

Popcast__DeploymentRecord *pc_deployment_copy(const Popcast__DeploymentRecord *d)
{
    size_t len = popcast__deployment_record__get_packed_size(d);
    uint8_t *buf = malloc(len ? len : 1);
    if (buf == NULL)
        return NULL;
    popcast__deployment_record__pack(d, buf);
    Popcast__DeploymentRecord *c = popcast__deployment_record__unpack(NULL, len, buf);
    free(buf);
    return c;
}

static bool has_event(const Popcast__DeploymentRecord *d, const char *what)
{
    for (size_t i = 0; i < d->n_events; i++)
        if (same_text(d->events[i]->what, what))
            return true;
    return false;
}

/* The current stage passes: the next one (its STAGE not made yet), or the
 * deployment is complete. */
static int pass_stage(Popcast__DeploymentRecord *d, int64_t now_ms, const char *what,
                      const char *detail)
{
    int rc = pc_deployment_add_event(d, now_ms, what, d->stage, 0, detail);
    if (rc == PC_OK && d->stage + 1 >= d->n_plan) {
        d->state = POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_COMPLETE;
        rc = pc_deployment_add_event(d, now_ms, "complete", d->stage, 0, "");
    } else if (rc == PC_OK) {
        d->stage++;
        d->stage_seq = 0;
        d->stage_started_unix_ms = 0;
    }
    return rc;
}

int pc_deployment_apply(const Popcast__DeploymentRecord *cur, const pc_deployment_op *op,
                        int64_t now_ms, const char *author, Popcast__DeploymentRecord **next,
                        pc_err *err)
{
    *next = NULL;
    const char *name = pc_deployment_op_name(op->kind);
    const Popcast__DeploymentState running = POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_RUNNING,
                                   paused = POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_PAUSED,
                                   halted = POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_HALTED;
    bool ok;
    switch (op->kind) {
    case PC_DEPLOYMENT_STAGED:
        ok = cur->state == running && op->stage == cur->stage && cur->stage_seq == 0 && op->seq;
        break;
    case PC_DEPLOYMENT_PASSED:
    case PC_DEPLOYMENT_FAILED:
        ok = cur->state == running && op->stage == cur->stage && cur->stage_seq != 0;
        break;
    case PC_DEPLOYMENT_REVERTED: ok = cur->state == halted && cur->baseline != 0; break;
    case PC_DEPLOYMENT_SUPERSEDED: ok = !pc_deployment_final(cur); break;
    case PC_DEPLOYMENT_PAUSE: ok = cur->state == running; break;
    case PC_DEPLOYMENT_RESUME: ok = cur->state == paused; break;
    case PC_DEPLOYMENT_ABORT: ok = cur->state == running || cur->state == paused; break;
    case PC_DEPLOYMENT_PROMOTE:
        ok = (cur->state == running || cur->state == paused) && cur->stage_seq != 0;
        break;
    default: return pc_err_set(err, PC_E_INVALID, "unknown deployment operation");
    }
    if (!ok)
        return pc_err_set(
            err, PC_E_EXISTS, "deployment %llu of %s is %s at stage %u of %zu%s: it cannot be %s",
            (unsigned long long)cur->id, cur->tenant, pc_deployment_state_name(cur->state),
            cur->stage + 1, cur->n_plan, cur->stage_seq == 0 ? " (not started yet)" : "", name);
    Popcast__DeploymentRecord *d = pc_deployment_copy(cur);
    if (d == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    char said[PC_DEPLOYMENT_DETAIL_MAX + 96];
    if (author != NULL && author[0] != '\0')
        snprintf(said, sizeof(said), "by %s%s%s", author, op->detail[0] ? ": " : "", op->detail);
    else
        snprintf(said, sizeof(said), "%s", op->detail);
    int rc = PC_OK;
    switch (op->kind) {
    case PC_DEPLOYMENT_STAGED:
        d->stage_seq = op->seq;
        d->stage_started_unix_ms = now_ms;
        rc = pc_deployment_add_event(d, now_ms, name, d->stage, op->seq, said);
        break;
    case PC_DEPLOYMENT_PASSED:
    case PC_DEPLOYMENT_PROMOTE: rc = pass_stage(d, now_ms, name, said); break;
    case PC_DEPLOYMENT_FAILED:
    case PC_DEPLOYMENT_ABORT:
        d->state = halted;
        rc = pc_deployment_add_event(d, now_ms, name, d->stage, 0, said);
        break;
    case PC_DEPLOYMENT_REVERTED:
        d->state = has_event(d, "aborted") ? POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_ABORTED
                                           : POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_REVERTED;
        d->revert_seq = op->seq;
        rc = pc_deployment_add_event(d, now_ms, name, d->stage, op->seq, said);
        break;
    case PC_DEPLOYMENT_SUPERSEDED:
        d->state = POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_SUPERSEDED;
        rc = pc_deployment_add_event(d, now_ms, name, d->stage, 0, said);
        break;
    case PC_DEPLOYMENT_PAUSE:
        d->state = paused;
        rc = pc_deployment_add_event(d, now_ms, name, d->stage, 0, said);
        break;
    case PC_DEPLOYMENT_RESUME:
        d->state = running;
        rc = pc_deployment_add_event(d, now_ms, name, d->stage, 0, said);
        break;
    default: break;
    }
    if (rc != PC_OK) {
        popcast__deployment_record__free_unpacked(d, NULL);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    *next = d;
    return PC_OK;
}

static Popcast__DeploymentStage *stage_new(const Popcast__Target *target, uint64_t bake_ms,
                                           bool gate)
{
    Popcast__DeploymentStage *s = malloc(sizeof(*s));
    if (s == NULL)
        return NULL;
    popcast__deployment_stage__init(s);
    s->bake_ms = bake_ms;
    s->gate = gate;
    if (target != NULL && (s->target = pc_target_copy(target)) == NULL) {
        free(s);
        return NULL;
    }
    return s;
}

int pc_deployment_default_plan(Popcast__DeploymentRecord *d, const char *canary_pop,
                               uint64_t bake_ms)
{
    Popcast__Target canary = POPCAST__TARGET__INIT, tenth = POPCAST__TARGET__INIT,
                    half = POPCAST__TARGET__INIT;
    char *pops[1] = {(char *)canary_pop};
    bool has_canary = canary_pop != NULL && canary_pop[0] != '\0';
    if (has_canary) {
        canary.pops = tenth.pops = half.pops = pops;
        canary.n_pops = tenth.n_pops = half.n_pops = 1;
    }
    tenth.permille = 100;
    half.permille = 500;
    const Popcast__Target *targets[] = {has_canary ? &canary : NULL, &tenth, &half, NULL};
    Popcast__DeploymentStage **plan = calloc(4, sizeof(*plan));
    if (plan == NULL)
        return PC_E_NOMEM;
    size_t n = 0;
    for (size_t i = 0; i < 4; i++) {
        if (i == 0 && !has_canary)
            continue;
        bool last = i == 3;
        if ((plan[n] = stage_new(targets[i], last ? 0 : bake_ms, !last)) == NULL) {
            for (size_t j = 0; j < n; j++)
                popcast__deployment_stage__free_unpacked(plan[j], NULL);
            free(plan);
            return PC_E_NOMEM;
        }
        n++;
    }
    d->plan = plan;
    d->n_plan = n;
    return PC_OK;
}

json_t *pc_deployment_plan_json(Popcast__DeploymentStage *const *plan, size_t n)
{
    json_t *stages = json_array();
    for (size_t i = 0; i < n; i++) {
        const Popcast__DeploymentStage *s = plan[i];
        json_array_append_new(
            stages, json_pack("{s:o,s:I,s:i,s:I,s:b}", "target", pc_target_json(s->target),
                              "bake_ms", (json_int_t)s->bake_ms, "max_nacks", (int)s->max_nacks,
                              "min_requests", (json_int_t)s->min_requests, "gate", s->gate));
    }
    return stages;
}

json_t *pc_deployment_json(const Popcast__DeploymentRecord *d)
{
    json_t *stages = pc_deployment_plan_json(d->plan, d->n_plan), *events = json_array();
    for (size_t i = 0; i < d->n_events; i++) {
        const Popcast__DeploymentEvent *e = d->events[i];
        json_t *o = json_pack("{s:I,s:s,s:i}", "at_unix_ms", (json_int_t)e->at_unix_ms, "what",
                              e->what ? e->what : "", "stage", (int)e->stage + 1);
        if (e->seq != 0)
            json_object_set_new(o, "seq", json_integer((json_int_t)e->seq));
        if (e->detail != NULL && e->detail[0] != '\0')
            pc_json_set_text(o, "detail", e->detail);
        json_array_append_new(events, o);
    }
    json_t *o = json_pack(
        "{s:s,s:I,s:I,s:I,s:s,s:i,s:i,s:I,s:b,s:I,s:o,s:o}", "tenant", d->tenant ? d->tenant : "",
        "id", (json_int_t)d->id, "version", (json_int_t)d->version, "baseline",
        (json_int_t)d->baseline, "state", pc_deployment_state_name(d->state), "stage",
        (int)d->stage + 1, "stages_total", (int)d->n_plan, "created_unix_ms",
        (json_int_t)d->created_unix_ms, "immediate", d->immediate, "stage_started_unix_ms",
        (json_int_t)d->stage_started_unix_ms, "plan", stages, "events", events);
    if (o == NULL)
        return NULL;
    if (d->stage_seq != 0)
        json_object_set_new(o, "stage_seq", json_integer((json_int_t)d->stage_seq));
    if (d->revert_seq != 0)
        json_object_set_new(o, "revert_seq", json_integer((json_int_t)d->revert_seq));
    if (d->author != NULL && d->author[0] != '\0')
        pc_json_set_text(o, "author", d->author);
    return o;
}
