/* test_applier_outcomes.c - what the agent's applier (agent/applier.h)
 * says about versions: the outcome of each version it processed (live,
 * nacked, held where its target does not name the agent; a delete in
 * effect), kept per tenant and in its store so they
 * survive a restart; only entries that verified become nacks; reports say
 * what the runtime serves even when the store cannot record it. Runs the
 * applier on a real store with a fake runtime adapter that refuses the
 * versions a test names (and can fill the store when it swaps one in). */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "applier.h"
#include "envelope.h"
#include "harness.h"
#include "registry.h"

/* The fake runtime: one live version per tenant (few tenants), refusing
 * the version in `refuse` and running `on_activate` when it swaps one in. */
#define FAKE_TENANTS 8

typedef struct fake {
    pc_adapter base;
    char tenant[FAKE_TENANTS][PC_TENANT_MAX + 1];
    uint64_t live[FAKE_TENANTS];
    uint64_t refuse;
    void (*on_activate)(void *arg);
    void *on_activate_arg;
} fake;

struct pc_prepared {
    char tenant[PC_TENANT_MAX + 1];
    uint64_t version;
};

static size_t fake_slot(fake *f, const char *tenant)
{
    for (size_t i = 0; i < FAKE_TENANTS; i++)
        if (strcmp(f->tenant[i], tenant) == 0)
            return i;
    for (size_t i = 0; i < FAKE_TENANTS; i++)
        if (f->tenant[i][0] == '\0') {
            snprintf(f->tenant[i], sizeof(f->tenant[i]), "%s", tenant);
            return i;
        }
    fail_msg("fake adapter: too many tenants");
    return 0;
}

static int fake_prepare(pc_adapter *a, const pc_version_spec *spec, pc_prepared **out, pc_err *err)
{
    fake *f = (fake *)a;
    if (spec->version == f->refuse)
        return pc_err_set(err, PC_E_RUNTIME, "boom in version %llu",
                          (unsigned long long)spec->version);
    pc_prepared *p = calloc(1, sizeof(*p));
    snprintf(p->tenant, sizeof(p->tenant), "%s", spec->tenant);
    p->version = spec->version;
    *out = p;
    return PC_OK;
}

static int fake_activate(pc_adapter *a, pc_prepared *p, pc_err *err)
{
    fake *f = (fake *)a;
    f->live[fake_slot(f, p->tenant)] = p->version;
    free(p);
    if (f->on_activate != NULL)
        f->on_activate(f->on_activate_arg);
    return PC_OK;
}

static void fake_discard(pc_adapter *a, pc_prepared *p)
{
    free(p);
}

static int fake_deactivate(pc_adapter *a, const char *tenant, pc_err *err)
{
    fake *f = (fake *)a;
    f->live[fake_slot(f, tenant)] = 0;
    return PC_OK;
}

static uint64_t fake_live_version(pc_adapter *a, const char *tenant)
{
    fake *f = (fake *)a;
    return f->live[fake_slot(f, tenant)];
}

static void fake_destroy(pc_adapter *a) {}

static void fake_init(fake *f)
{
    memset(f, 0, sizeof(*f));
    f->base.name = "fake";
    f->base.prepare = fake_prepare;
    f->base.activate = fake_activate;
    f->base.discard = fake_discard;
    f->base.deactivate = fake_deactivate;
    f->base.live_version = fake_live_version;
    f->base.destroy = fake_destroy;
}

/* The fixture: a store, a root key the applier trusts, the fake. */
static char dir[256];
static pc_store *store;
static pc_signing_key root;
static pc_keyring trusted;
static pc_metrics *metrics;
static fake rt;
static pc_adapter *adapters[1];

static int setup_with(const pc_store_options *opt)
{
    pc_test_init();
    pc_test_tmpdir(dir, sizeof(dir), "applier");
    assert_int_equal(pc_store_open(&store, dir, opt, NULL), PC_OK);
    assert_int_equal(pc_keygen(&root), PC_OK);
    memset(&trusted, 0, sizeof(trusted));
    assert_int_equal(pc_keyring_add(&trusted, &root.pub, NULL), PC_OK);
    metrics = pc_metrics_new();
    fake_init(&rt);
    adapters[0] = &rt.base;
    return 0;
}

/* The agent's store writes through its map (store_write_map). */
static int setup(void **state)
{
    pc_store_options opt = {.write_map = true};
    return setup_with(&opt);
}

/* A store that cannot grow past 2 MiB. */
static int setup_small(void **state)
{
    pc_store_options opt = {.map_size = 2 << 20, .map_size_max = 2 << 20, .write_map = true};
    return setup_with(&opt);
}

static int teardown(void **state)
{
    pc_store_close(store);
    pc_metrics_free(metrics);
    pc_test_rm_rf(dir);
    return 0;
}

static pc_applier *applier_new(void)
{
    pc_applier_options o = {.store = store,
                            .agent_id = "edge-1",
                            .pop = "ams",
                            .trusted = &trusted,
                            .adapters = adapters,
                            .n_adapters = 1,
                            .metrics = metrics,
                            .max_bundle = 1 << 20,
                            .stale_after_ms = 60000};
    pc_applier *a = NULL;
    pc_err err;
    if (pc_applier_new(&a, &o, &err) != PC_OK)
        fail_msg("applier: %s", err.msg);
    return a;
}

/* Applies the entry of tenant's version at seq, signed by key: a deploy
 * of body targeted at target (NULL: everyone), a delete when body is NULL
 * and stage is false, a STAGE of version when stage is true. Returns the
 * applier's answer. */
static int apply_entry(pc_applier *a, const pc_signing_key *key, const char *tenant,
                       uint64_t version, uint64_t seq, const char *body, bool stage,
                       Popcast__Target *target)
{
    Popcast__Manifest m = POPCAST__MANIFEST__INIT;
    uint8_t hash[PC_HASH_LEN];
    m.tenant = (char *)tenant;
    m.version = version;
    m.seq = seq;
    m.target = target;
    if (stage) {
        m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_STAGE;
    } else if (body != NULL) {
        m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY;
        pc_hash(hash, body, strlen(body));
        m.bundle_hash.data = hash;
        m.bundle_hash.len = PC_HASH_LEN;
        m.bundle_size = strlen(body);
        m.entrypoint = "main.lua";
        m.runtime = "fake";
    } else {
        m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE;
    }
    Popcast__SignedManifest sm;
    assert_int_equal(pc_envelope_sign_manifest(key, &m, &sm, NULL), PC_OK);
    Popcast__Entry e = POPCAST__ENTRY__INIT;
    e.signed_ = &sm;
    if (body != NULL) {
        e.bundle.data = (uint8_t *)body;
        e.bundle.len = strlen(body);
    }
    pc_err err;
    int rc = pc_applier_apply_entry(a, &e, &err);
    pc_envelope_signed_clear(&sm);
    return rc;
}

static int apply(pc_applier *a, const pc_signing_key *key, const char *tenant, uint64_t version,
                 uint64_t seq, const char *body)
{
    return apply_entry(a, key, tenant, version, seq, body, false, NULL);
}

/* The report's entry for tenant (NULL if absent). */
static const Popcast__TenantStatus *tenant_in(const Popcast__AgentStatus *st, const char *tenant)
{
    for (size_t i = 0; i < st->n_tenants; i++)
        if (strcmp(st->tenants[i]->tenant, tenant) == 0)
            return st->tenants[i];
    return NULL;
}

/* "v1:L v2:N v3:L v4:D v5:H": each outcome, L live, N nacked, D a delete
 * in effect, H held. */
static void outcomes_text(const Popcast__TenantStatus *t, char *out, size_t cap)
{
    out[0] = '\0';
    for (size_t i = 0; i < t->n_outcomes; i++) {
        const Popcast__VersionOutcome *o = t->outcomes[i];
        char state = o->state == POPCAST__VERSION_STATE__VERSION_STATE_NACKED ? 'N'
                     : o->state == POPCAST__VERSION_STATE__VERSION_STATE_HELD ? 'H'
                     : o->is_delete                                           ? 'D'
                                                                              : 'L';
        size_t n = strlen(out);
        snprintf(out + n, cap - n, "%sv%llu:%c", i ? " " : "", (unsigned long long)o->version,
                 state);
    }
}

static void expect_outcomes(pc_applier *a, const char *tenant, const char *want, uint64_t from)
{
    Popcast__AgentStatus st;
    assert_int_equal(pc_applier_status(a, &st), PC_OK);
    const Popcast__TenantStatus *t = tenant_in(&st, tenant);
    assert_non_null(t);
    char got[256];
    outcomes_text(t, got, sizeof(got));
    if (strcmp(got, want) != 0 || t->outcomes_from != from)
        fail_msg("%s: outcomes \"%s\" from %llu, expected \"%s\" from %llu", tenant, got,
                 (unsigned long long)t->outcomes_from, want, (unsigned long long)from);
    pc_applier_status_clear(&st);
}

/* Live, nacked, a later good version, a delete: each version keeps its own
 * outcome, the nack its reason; all of it survives a restart. */
static void test_outcomes_kept_across_restart(void **state)
{
    pc_applier *a = applier_new();
    rt.refuse = 2;
    assert_int_equal(apply(a, &root, "app", 1, 1, "one"), PC_OK);
    assert_int_equal(apply(a, &root, "app", 2, 2, "two"), PC_OK);
    assert_int_equal(apply(a, &root, "app", 3, 3, "three"), PC_OK);
    assert_int_equal(apply(a, &root, "other", 1, 4, "o"), PC_OK);
    assert_int_equal(apply(a, &root, "other", 2, 5, NULL), PC_OK);
    expect_outcomes(a, "app", "v1:L v2:N v3:L", 1);
    expect_outcomes(a, "other", "v1:L v2:D", 1);

    Popcast__AgentStatus st;
    assert_int_equal(pc_applier_status(a, &st), PC_OK);
    const Popcast__TenantStatus *t = tenant_in(&st, "app");
    assert_int_equal(t->outcomes[1]->seq, 2);
    assert_int_equal(t->outcomes[1]->decided_seq, 2);
    assert_string_equal(t->outcomes[1]->reason, "runtime_error");
    assert_non_null(strstr(t->outcomes[1]->detail, "boom in version 2"));
    assert_int_equal(t->live_version, 3);
    /* The nack list (for older controllers) holds the nack alone. */
    assert_int_equal(st.n_nacks, 1);
    assert_string_equal(st.nacks[0]->tenant, "app");
    assert_int_equal(st.nacks[0]->version, 2);
    pc_applier_status_clear(&st);

    /* Restart. */
    pc_applier_free(a);
    a = applier_new();
    pc_applier_load(a);
    expect_outcomes(a, "app", "v1:L v2:N v3:L", 1);
    expect_outcomes(a, "other", "v1:L v2:D", 1);
    json_t *js = pc_applier_status_json(a);
    json_t *nacks = json_object_get(js, "nacks");
    assert_int_equal(json_array_size(nacks), 1);
    json_t *tenants = json_object_get(js, "tenants");
    json_t *app = json_array_get(tenants, 0);
    assert_string_equal(json_string_value(json_object_get(app, "tenant")), "app");
    json_t *o2 = json_array_get(json_object_get(app, "outcomes"), 1);
    assert_string_equal(json_string_value(json_object_get(o2, "state")), "nacked");
    json_decref(js);
    pc_applier_free(a);
}

/* Only the 8 most recent versions of a tenant are kept; outcomes_from
 * moves past the ones dropped. */
static void test_outcomes_bounded(void **state)
{
    pc_applier *a = applier_new();
    rt.refuse = 0;
    char body[16];
    for (uint64_t v = 1; v <= 10; v++) {
        snprintf(body, sizeof(body), "v%llu", (unsigned long long)v);
        assert_int_equal(apply(a, &root, "app", v, v, body), PC_OK);
    }
    expect_outcomes(a, "app", "v3:L v4:L v5:L v6:L v7:L v8:L v9:L v10:L", 3);
    pc_applier_free(a);
}

/* A version nacked at first that loads at a restart (the runtime refused
 * it then, not now) becomes live; a live one stays live. */
static void test_nacked_then_loaded(void **state)
{
    pc_applier *a = applier_new();
    rt.refuse = 2;
    assert_int_equal(apply(a, &root, "app", 1, 1, "one"), PC_OK);
    assert_int_equal(apply(a, &root, "app", 2, 2, "two"), PC_OK);
    expect_outcomes(a, "app", "v1:L v2:N", 1);
    pc_applier_free(a);
    rt.refuse = 0;
    memset(rt.live, 0, sizeof(rt.live));
    a = applier_new();
    assert_int_equal(pc_applier_load(a), 1);
    expect_outcomes(a, "app", "v1:L v2:L", 1);
    pc_applier_free(a);
}

/* Garbage and forgeries are refused and counted, and never become nacks:
 * the genuine nack stays the only one. */
static void test_garbage_is_not_a_nack(void **state)
{
    pc_applier *a = applier_new();
    rt.refuse = 2;
    assert_int_equal(apply(a, &root, "app", 1, 1, "one"), PC_OK);
    assert_int_equal(apply(a, &root, "app", 2, 2, "two"), PC_OK);
    pc_signing_key stranger;
    assert_int_equal(pc_keygen(&stranger), PC_OK);
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    for (int i = 0; i < 100; i++) {
        pc_applier_on_publication(a, junk, sizeof(junk));
        assert_int_not_equal(apply(a, &stranger, "app", 2, 3, "forged"), PC_OK);
        assert_int_not_equal(apply(a, &stranger, "evil", 1, 3, "forged"), PC_OK);
    }
    assert_int_equal(pc_metrics_get(metrics, "popcast_agent_refused_total", "reason=\"invalid\""),
                     100);
    assert_int_equal(
        pc_metrics_get(metrics, "popcast_agent_refused_total", "reason=\"untrusted_key\""), 200);
    Popcast__AgentStatus st;
    assert_int_equal(pc_applier_status(a, &st), PC_OK);
    assert_int_equal(st.n_nacks, 1);
    assert_int_equal(st.nacks[0]->version, 2);
    assert_null(tenant_in(&st, "evil"));
    pc_applier_status_clear(&st);
    expect_outcomes(a, "app", "v1:L v2:N", 1);
    pc_applier_free(a);
    pc_signing_key_wipe(&stranger);
}

/* A validly signed entry that reuses a live version's number (at the next
 * seq) is refused as stale_version: a nack, but not the outcome of that
 * version, which went live and stays live. */
static void test_nack_that_is_not_an_outcome(void **state)
{
    pc_applier *a = applier_new();
    rt.refuse = 0;
    assert_int_equal(apply(a, &root, "app", 1, 1, "one"), PC_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(apply(a, &root, "app", 1, 2, "old content"), PC_E_STALE_VERSION);
    expect_outcomes(a, "app", "v1:L", 1);
    Popcast__AgentStatus st;
    assert_int_equal(pc_applier_status(a, &st), PC_OK);
    assert_int_equal(st.n_nacks, 1); /* once, however often it came */
    assert_string_equal(st.nacks[0]->reason, "stale_version");
    assert_int_equal(st.nacks[0]->version, 1);
    assert_int_equal(st.nacks[0]->seq, 2);
    pc_applier_status_clear(&st);
    pc_applier_free(a);
}

/* The tenant part of a status as text: each tenant's versions and
 * outcomes, then the nacks. */
static void tenant_part(pc_applier *a, char *out, size_t cap)
{
    Popcast__AgentStatus st;
    assert_int_equal(pc_applier_status(a, &st), PC_OK);
    size_t n = 0;
    out[0] = '\0';
    for (size_t i = 0; i < st.n_tenants && n < cap; i++) {
        const Popcast__TenantStatus *t = st.tenants[i];
        char outcomes[256];
        outcomes_text(t, outcomes, sizeof(outcomes));
        n += (size_t)snprintf(out + n, cap - n, "%s a%llu l%llu s%llu u%d [%s]; ", t->tenant,
                              (unsigned long long)t->applied_version,
                              (unsigned long long)t->live_version,
                              (unsigned long long)t->applied_seq, t->live_unrecorded, outcomes);
    }
    for (size_t i = 0; i < st.n_nacks && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "nack %s v%llu s%llu %s; ", st.nacks[i]->tenant,
                              (unsigned long long)st.nacks[i]->version,
                              (unsigned long long)st.nacks[i]->seq, st.nacks[i]->reason);
    assert_true(n < cap);
    pc_applier_status_clear(&st);
}

/* Reports rebuild their tenant part only when the tenants generation
 * moved (agent/syncer.c), so it must move with every change of that part:
 * after each step below, a changed tenant part with an unmoved generation
 * fails. Building a status moves nothing. */
static void test_tenants_generation_moves_with_every_change(void **state)
{
    static char before[4096], after[4096];
    pc_applier *a = applier_new();
    rt.refuse = 3;
    pc_signing_key stranger;
    assert_int_equal(pc_keygen(&stranger), PC_OK);
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    enum { DEPLOY, NACKED, STALE, FORGED, GARBAGE, DUPLICATE, DELETE, RESTART, STEPS };
    size_t changes = 0;
    for (int step = 0; step < STEPS; step++) {
        tenant_part(a, before, sizeof(before));
        uint64_t g = pc_applier_tenants_generation(a);
        tenant_part(a, after, sizeof(after));
        assert_int_equal(pc_applier_tenants_generation(a), g);
        switch (step) {
        case DEPLOY:
            assert_int_equal(apply(a, &root, "app", 1, 1, "one"), PC_OK);
            assert_int_equal(apply(a, &root, "app", 2, 2, "two"), PC_OK);
            break;
        case NACKED: assert_int_equal(apply(a, &root, "app", 3, 3, "three"), PC_OK); break;
        case STALE:
            assert_int_equal(apply(a, &root, "app", 2, 4, "old"), PC_E_STALE_VERSION);
            break;
        case FORGED: assert_int_not_equal(apply(a, &stranger, "app", 5, 4, "x"), PC_OK); break;
        case GARBAGE: pc_applier_on_publication(a, junk, sizeof(junk)); break;
        case DUPLICATE: (void)apply(a, &root, "app", 2, 2, "two"); break;
        case DELETE: assert_int_equal(apply(a, &root, "app", 4, 4, NULL), PC_OK); break;
        case RESTART:
            pc_applier_free(a);
            memset(rt.live, 0, sizeof(rt.live));
            a = applier_new();
            g = pc_applier_tenants_generation(a);
            assert_int_equal(apply(a, &root, "more", 1, 5, "m"), PC_OK);
            pc_applier_load(a);
            break;
        }
        tenant_part(a, after, sizeof(after));
        if (strcmp(before, after) != 0) {
            changes++;
            if (pc_applier_tenants_generation(a) == g)
                fail_msg("step %d changed the tenant part without moving the generation:\n"
                         "before: %s\nafter:  %s",
                         step, before, after);
        }
    }
    /* Deploys, a nack, a stale version, a delete, a new tenant: each changed it. */
    assert_int_equal(changes, 5);
    pc_applier_free(a);
    pc_signing_key_wipe(&stranger);
}

/* Fills the store until nothing more fits (values of shrinking sizes, so
 * that even small writes fail afterwards). Runs once. */
static void fill_store(void *arg)
{
    static uint8_t big[64 * 1024];
    const size_t sizes[] = {sizeof(big), 4096, 256, 16};
    char key[64];
    int n = 0;
    pc_err err;
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++)
        while (snprintf(key, sizeof(key), "fill.%d", n++) > 0 &&
               pc_store_meta_put(store, key, big, sizes[k], &err) == PC_OK)
            ;
    assert_non_null(strstr(err.msg, "store is full"));
    rt.on_activate = NULL;
}

/* The store fills up while v2 is being made live: the runtime serves v2,
 * the store still says v1. The report and /v1/status say v2 (what serves),
 * flag it unrecorded and count the failure; they used to say v1. */
static void test_live_when_the_store_is_full(void **state)
{
    pc_applier *a = applier_new();
    rt.refuse = 0;
    assert_int_equal(apply(a, &root, "app", 1, 1, "one"), PC_OK);
    rt.on_activate = fill_store;
    assert_int_equal(apply(a, &root, "app", 2, 2, "two"), PC_OK);
    assert_null(rt.on_activate); /* the store was filled */
    assert_int_equal(fake_live_version(&rt.base, "app"), 2);
    pc_tenant_state t;
    assert_int_equal(pc_store_get_tenant(store, "app", &t, NULL), PC_OK);
    assert_int_equal(t.live_version, 1);

    Popcast__AgentStatus st;
    assert_int_equal(pc_applier_status(a, &st), PC_OK);
    const Popcast__TenantStatus *ts = tenant_in(&st, "app");
    assert_non_null(ts);
    assert_int_equal(ts->live_version, 2);
    assert_true(ts->live_unrecorded);
    /* The live version's record failed, and so did its outcome's. */
    assert_true(st.record_failures >= 1);
    pc_applier_status_clear(&st);
    expect_outcomes(a, "app", "v1:L v2:L", 1);
    assert_true(pc_metrics_get(metrics, "popcast_agent_record_failures_total", NULL) >= 1);

    json_t *js = pc_applier_status_json(a);
    json_t *app = json_array_get(json_object_get(js, "tenants"), 0);
    assert_int_equal(json_integer_value(json_object_get(app, "live_version")), 2);
    assert_int_equal(json_integer_value(json_object_get(app, "recorded_live_version")), 1);
    assert_true(json_is_true(json_object_get(app, "live_unrecorded")));
    assert_true(json_integer_value(json_object_get(js, "record_failures")) >= 1);
    json_decref(js);
    pc_applier_free(a);
}

/* What the fake serves of tenant, and what the report says is live. */
static void expect_serving(pc_applier *a, const char *tenant, uint64_t live, uint64_t applied)
{
    assert_int_equal(rt.live[fake_slot(&rt, tenant)], live);
    Popcast__AgentStatus st;
    assert_int_equal(pc_applier_status(a, &st), PC_OK);
    const Popcast__TenantStatus *t = tenant_in(&st, tenant);
    assert_non_null(t);
    assert_int_equal(t->live_version, live);
    assert_int_equal(t->applied_version, applied);
    pc_applier_status_clear(&st);
}

static char *pop_other[] = {"fra"}, *pop_mine[] = {"ams"}, *agent_mine[] = {"edge-1"},
            *agent_other[] = {"edge-2"};

/* A version whose target does not name this agent is stored and held:
 * the version before it keeps serving, the report says so, and only a
 * STAGE naming the agent (by PoP, by id, or everyone) makes it live. */
static void test_held_version_never_serves(void **state)
{
    pc_applier *a = applier_new();
    Popcast__Target other = POPCAST__TARGET__INIT, nobody = POPCAST__TARGET__INIT,
                    by_agent = POPCAST__TARGET__INIT, by_pop = POPCAST__TARGET__INIT;
    other.pops = pop_other;
    other.n_pops = 1;
    other.agents = agent_other;
    other.n_agents = 1;
    by_agent.agents = agent_mine;
    by_agent.n_agents = 1;
    by_pop.pops = pop_mine;
    by_pop.n_pops = 1;
    assert_int_equal(apply(a, &root, "app", 1, 1, "one"), PC_OK);
    assert_int_equal(apply_entry(a, &root, "app", 2, 2, "two", false, &other), PC_OK);
    expect_serving(a, "app", 1, 2);
    expect_outcomes(a, "app", "v1:L v2:H", 1);
    /* A stage that still names others only. */
    assert_int_equal(apply_entry(a, &root, "app", 2, 3, NULL, true, &other), PC_OK);
    expect_serving(a, "app", 1, 2);
    assert_int_equal(apply_entry(a, &root, "app", 2, 4, NULL, true, &by_pop), PC_OK);
    expect_serving(a, "app", 2, 2);
    expect_outcomes(a, "app", "v1:L v2:L", 1);

    /* An upload (a target naming nobody), then a stage by agent id. */
    assert_int_equal(apply_entry(a, &root, "app", 3, 5, "three", false, &nobody), PC_OK);
    expect_serving(a, "app", 2, 3);
    assert_int_equal(apply_entry(a, &root, "app", 3, 6, NULL, true, &by_agent), PC_OK);
    expect_serving(a, "app", 3, 3);
    /* And one for everyone (no target). */
    assert_int_equal(apply_entry(a, &root, "app", 4, 7, "four", false, &nobody), PC_OK);
    assert_int_equal(apply_entry(a, &root, "app", 4, 8, NULL, true, NULL), PC_OK);
    expect_serving(a, "app", 4, 4);
    expect_outcomes(a, "app", "v1:L v2:L v3:L v4:L", 1);
    /* A held version that fails to load when its stage comes is nacked,
     * and the one before keeps serving. */
    rt.refuse = 5;
    assert_int_equal(apply_entry(a, &root, "app", 5, 9, "five", false, &nobody), PC_OK);
    assert_int_equal(apply_entry(a, &root, "app", 5, 10, NULL, true, NULL), PC_OK);
    expect_serving(a, "app", 4, 5);
    expect_outcomes(a, "app", "v1:L v2:L v3:L v4:L v5:N", 1);
    pc_applier_free(a);
}

/* A STAGE only ever widens the tenant's active version: one for a version
 * a newer change overtook does nothing (never makes an older version
 * live), one for a version the tenant never had is refused. */
static void test_stage_never_makes_an_older_version_live(void **state)
{
    pc_applier *a = applier_new();
    Popcast__Target nobody = POPCAST__TARGET__INIT;
    assert_int_equal(apply(a, &root, "app", 1, 1, "one"), PC_OK);
    assert_int_equal(apply_entry(a, &root, "app", 2, 2, "two", false, &nobody), PC_OK);
    assert_int_equal(apply_entry(a, &root, "app", 3, 3, "three", false, &nobody), PC_OK);
    assert_int_equal(apply_entry(a, &root, "app", 2, 4, NULL, true, NULL), PC_OK);
    expect_serving(a, "app", 1, 3);
    expect_outcomes(a, "app", "v1:L v2:H v3:H", 1);
    assert_int_not_equal(apply_entry(a, &root, "app", 9, 5, NULL, true, NULL), PC_OK);
    assert_int_equal(pc_applier_applied_seq(a), 4);
    expect_serving(a, "app", 1, 3);
    /* A deleted tenant's stage does nothing either. */
    assert_int_equal(apply(a, &root, "app", 4, 5, NULL), PC_OK);
    assert_int_equal(apply_entry(a, &root, "app", 4, 6, NULL, true, NULL), PC_OK);
    expect_serving(a, "app", 0, 4);
    assert_int_equal(apply_entry(a, &root, "app", 3, 7, NULL, true, NULL), PC_OK);
    expect_serving(a, "app", 0, 4);
    pc_applier_free(a);
}

/* A restart keeps a held version held (the version before serves), and a
 * STAGE that was stored but not yet made live when the agent died (kill
 * -9 between the two) makes it live at the next start. */
static void test_held_across_restart(void **state)
{
    pc_applier *a = applier_new();
    Popcast__Target nobody = POPCAST__TARGET__INIT;
    assert_int_equal(apply(a, &root, "app", 1, 1, "one"), PC_OK);
    assert_int_equal(apply_entry(a, &root, "app", 2, 2, "two", false, &nobody), PC_OK);
    assert_int_equal(apply_entry(a, &root, "new", 1, 3, "n", false, &nobody), PC_OK);
    pc_applier_free(a);
    memset(rt.live, 0, sizeof(rt.live));
    a = applier_new();
    assert_int_equal(pc_applier_load(a), 1);
    expect_serving(a, "app", 1, 2);
    expect_serving(a, "new", 0, 1);
    expect_outcomes(a, "app", "v1:L v2:H", 1);
    pc_applier_free(a);

    /* The stage reaches the store, and the agent dies before the swap. */
    Popcast__Manifest m = POPCAST__MANIFEST__INIT;
    m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_STAGE;
    m.tenant = "app";
    m.version = 2;
    m.seq = 4;
    Popcast__SignedManifest sm;
    assert_int_equal(pc_envelope_sign_manifest(&root, &m, &sm, NULL), PC_OK);
    assert_int_equal(pc_store_apply(store, &sm, &m, NULL, 0, NULL), PC_OK);
    pc_envelope_signed_clear(&sm);
    memset(rt.live, 0, sizeof(rt.live));
    a = applier_new();
    assert_int_equal(pc_applier_load(a), 1);
    expect_serving(a, "app", 2, 2);
    expect_outcomes(a, "app", "v1:L v2:L", 1);
    pc_applier_free(a);
}

/* A signed entry whose target is malformed (a per mille past 1000, a
 * name that is not an id, a delete with a target) is refused as invalid:
 * nothing is stored, nothing changes what serves. */
static void test_malformed_targets_are_refused(void **state)
{
    pc_applier *a = applier_new();
    assert_int_equal(apply(a, &root, "app", 1, 1, "one"), PC_OK);
    Popcast__Target too_many = POPCAST__TARGET__INIT, bad_name = POPCAST__TARGET__INIT,
                    fine = POPCAST__TARGET__INIT;
    too_many.permille = 1001;
    char *bad[] = {"edge 1"};
    bad_name.agents = bad;
    bad_name.n_agents = 1;
    assert_int_equal(apply_entry(a, &root, "app", 2, 2, "two", false, &too_many), PC_E_INVALID);
    assert_int_equal(apply_entry(a, &root, "app", 2, 2, "two", false, &bad_name), PC_E_INVALID);
    assert_int_equal(apply_entry(a, &root, "app", 2, 2, NULL, true, &bad_name), PC_E_INVALID);
    assert_int_equal(apply_entry(a, &root, "app", 2, 2, NULL, false, &fine), PC_E_INVALID);
    assert_int_equal(pc_applier_applied_seq(a), 1);
    expect_serving(a, "app", 1, 1);
    expect_outcomes(a, "app", "v1:L", 1);
    pc_applier_free(a);
}

/* Group apply (pc_applier_apply_entries): a script of entries, with a
 * nack, a delete, a held version, a tampered entry, the gap it leaves, a
 * duplicate and a stage, gives exactly what applying them one by one
 * gives (outcomes, what serves, and no record that failed), in fewer
 * store transactions. */
typedef struct built {
    Popcast__SignedManifest sm;
    Popcast__Entry e;
    uint8_t hash[PC_HASH_LEN];
} built;

typedef struct step {
    const char *tenant;
    uint64_t version, seq;
    const char *body; /* NULL: a delete, or a stage */
    bool stage, held, tampered;
} step;

static void build(built *b, const step *st)
{
    static Popcast__Target nobody = POPCAST__TARGET__INIT;
    memset(b, 0, sizeof(*b));
    Popcast__Manifest m = POPCAST__MANIFEST__INIT;
    m.tenant = (char *)st->tenant;
    m.version = st->version;
    m.seq = st->seq;
    m.target = st->held ? &nobody : NULL;
    if (st->stage) {
        m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_STAGE;
    } else if (st->body != NULL) {
        m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY;
        pc_hash(b->hash, st->body, strlen(st->body));
        m.bundle_hash.data = b->hash;
        m.bundle_hash.len = PC_HASH_LEN;
        m.bundle_size = strlen(st->body);
        m.entrypoint = "main.lua";
        m.runtime = "fake";
    } else {
        m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE;
    }
    assert_int_equal(pc_envelope_sign_manifest(&root, &m, &b->sm, NULL), PC_OK);
    if (st->tampered)
        b->sm.signature.data[0] ^= 1;
    popcast__entry__init(&b->e);
    b->e.signed_ = &b->sm;
    if (st->body != NULL) {
        b->e.bundle.data = (uint8_t *)st->body;
        b->e.bundle.len = strlen(st->body);
    }
}

static const step first_group[] = {
    {.tenant = "a", .version = 1, .seq = 1, .body = "a1"},
    {.tenant = "b", .version = 1, .seq = 2, .body = "b1"},
    {.tenant = "a", .version = 2, .seq = 3, .body = "a2"}, /* refused by the runtime: a nack */
    {.tenant = "b", .version = 2, .seq = 4, .body = NULL}, /* a delete */
    {.tenant = "c", .version = 1, .seq = 5, .body = "c1", .held = true},
    {.tenant = "c", .version = 2, .seq = 6, .body = "c2", .tampered = true},
    {.tenant = "c", .version = 3, .seq = 7, .body = "c3"}, /* a gap: 6 was refused */
};
static const step second_group[] = {
    {.tenant = "c", .version = 2, .seq = 6, .body = "c2"},
    {.tenant = "c", .version = 3, .seq = 7, .body = "c3"},
    {.tenant = "b", .version = 1, .seq = 2, .body = "b1"}, /* a duplicate */
    {.tenant = "a", .version = 3, .seq = 8, .body = "a3"},
    {.tenant = "c", .version = 3, .seq = 9, .body = NULL, .stage = true},
};
/* As from three controllers, which all publish every entry. */
static const step third_group[] = {
    {.tenant = "a", .version = 4, .seq = 10, .body = "a4"},
    {.tenant = "a", .version = 4, .seq = 10, .body = "a4"},
    {.tenant = "b", .version = 3, .seq = 11, .body = "b3"},
    {.tenant = "a", .version = 4, .seq = 10, .body = "a4"},
    {.tenant = "b", .version = 3, .seq = 11, .body = "b3"},
    {.tenant = "c", .version = 4, .seq = 12, .body = "c4"},
};

/* Applies a group one by one (grouped false) or at once; returns how
 * many were applied. */
static size_t apply_script(pc_applier *a, const step *steps, size_t n, bool grouped)
{
    built b[8];
    Popcast__Entry *es[8];
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++) {
        build(&b[i], &steps[i]);
        es[i] = &b[i].e;
    }
    size_t applied = 0;
    if (grouped) {
        applied = (size_t)pc_applier_apply_entries(a, es, n);
    } else {
        for (size_t i = 0; i < n; i++) {
            pc_err err;
            applied += pc_applier_apply_entry(a, es[i], &err) == PC_OK;
        }
    }
    for (size_t i = 0; i < n; i++)
        pc_envelope_signed_clear(&b[i].sm);
    return applied;
}

typedef struct script_result {
    size_t applied[3];
    uint64_t duplicates;
    uint64_t seq;
    char outcomes[3][256];
    uint64_t live[3];
    uint64_t live_after_restart[3];
} script_result;

static void run_script(bool grouped, script_result *r)
{
    fake_init(&rt);
    rt.refuse = 2;
    pc_applier *a = applier_new();
    r->applied[0] = apply_script(a, first_group, 7, grouped);
    r->applied[1] = apply_script(a, second_group, 5, grouped);
    uint64_t dup0 = pc_metrics_get(metrics, "popcast_agent_refused_total", "reason=\"duplicate\"");
    r->applied[2] = apply_script(a, third_group, 6, grouped);
    r->duplicates =
        pc_metrics_get(metrics, "popcast_agent_refused_total", "reason=\"duplicate\"") - dup0;
    r->seq = pc_applier_applied_seq(a);
    Popcast__AgentStatus st;
    assert_int_equal(pc_applier_status(a, &st), PC_OK);
    const char *names[3] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        const Popcast__TenantStatus *t = tenant_in(&st, names[i]);
        assert_non_null(t);
        outcomes_text(t, r->outcomes[i], sizeof(r->outcomes[i]));
        r->live[i] = fake_live_version(&rt.base, names[i]);
    }
    pc_applier_status_clear(&st);
    pc_applier_free(a);
    /* What the store says serves: a restart serves it. */
    memset(rt.live, 0, sizeof(rt.live));
    a = applier_new();
    pc_applier_load(a);
    for (int i = 0; i < 3; i++)
        r->live_after_restart[i] = fake_live_version(&rt.base, names[i]);
    pc_applier_free(a);
}

static void test_grouped_entries_apply_as_one_by_one(void **state)
{
    script_result one, grouped;
    memset(&one, 0, sizeof(one));
    memset(&grouped, 0, sizeof(grouped));
    run_script(false, &one);
    assert_int_equal(pc_metrics_get(metrics, "popcast_agent_apply_batches_total", NULL), 0);
    /* A second store, as a second agent. */
    pc_store *first = store;
    char first_dir[256];
    memcpy(first_dir, dir, sizeof(dir));
    pc_test_tmpdir(dir, sizeof(dir), "applier");
    pc_store_options opt = {.write_map = true};
    assert_int_equal(pc_store_open(&store, dir, &opt, NULL), PC_OK);
    run_script(true, &grouped);
    print_message("one by one: %zu + %zu applied, seq %llu; a \"%s\" b \"%s\" c \"%s\"\n",
                  one.applied[0], one.applied[1], (unsigned long long)one.seq, one.outcomes[0],
                  one.outcomes[1], one.outcomes[2]);
    assert_int_equal(one.applied[0], 5);
    assert_int_equal(one.applied[1], 4);
    assert_int_equal(one.applied[2], 3);
    assert_int_equal(one.duplicates, 3);
    assert_int_equal(one.seq, 12);
    assert_string_equal(one.outcomes[0], "v1:L v2:N v3:L v4:L");
    assert_int_equal(one.live[0], 4);
    assert_int_equal(one.live[1], 3);
    assert_int_equal(one.live[2], 4);
    assert_memory_equal(one.live_after_restart, one.live, sizeof(one.live));
    assert_memory_equal(&grouped, &one, sizeof(one));
    assert_int_equal(pc_metrics_get(metrics, "popcast_agent_record_failures_total", NULL), 0);
    /* 1-2, 3-5, 8-9 and 10-12 went as one transaction each (a group
     * takes a tenant once, and passes over copies of its entries); the
     * tampered entry, the gap, the lone duplicate and the entries next
     * to one of their tenant's went alone. */
    assert_int_equal(pc_metrics_get(metrics, "popcast_agent_apply_batches_total", NULL), 4);
    pc_store_close(store);
    pc_test_rm_rf(dir);
    store = first;
    memcpy(dir, first_dir, sizeof(dir));
}

/* A wake-up's messages (pc_applier_on_publications) with bad ones among
 * them: an undecodable message and a tampered entry are refused and
 * counted as alone, change nothing, and the good entries around them
 * still apply (the two before the tampered one as a group). */
static uint8_t *publication(const step *st, size_t *len)
{
    built b;
    build(&b, st);
    Popcast__Publication pub = POPCAST__PUBLICATION__INIT;
    pub.body_case = POPCAST__PUBLICATION__BODY_ENTRY;
    pub.entry = &b.e;
    *len = popcast__publication__get_packed_size(&pub);
    uint8_t *out = malloc(*len);
    assert_non_null(out);
    popcast__publication__pack(&pub, out);
    pc_envelope_signed_clear(&b.sm);
    return out;
}

static void test_bad_messages_in_a_wake_up(void **state)
{
    (void)state;
    pc_applier *a = applier_new();
    const step ok1 = {.tenant = "a", .version = 1, .seq = 1, .body = "a1"};
    const step ok2 = {.tenant = "b", .version = 1, .seq = 2, .body = "b1"};
    const step forged = {.tenant = "c", .version = 1, .seq = 3, .body = "c1", .tampered = true};
    const step ok3 = {.tenant = "c", .version = 1, .seq = 3, .body = "c1"};
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    size_t len[6];
    uint8_t *p1 = publication(&ok1, &len[1]), *p2 = publication(&ok2, &len[2]),
            *p3 = publication(&forged, &len[3]), *p4 = publication(&ok3, &len[5]);
    len[0] = len[4] = sizeof(junk);
    const uint8_t *data[6] = {junk, p1, p2, p3, junk, p4};
    uint64_t invalid0 =
        pc_metrics_get(metrics, "popcast_agent_refused_total", "reason=\"invalid\"");
    uint64_t forged0 =
        pc_metrics_get(metrics, "popcast_agent_refused_total", "reason=\"bad_signature\"");
    pc_applier_on_publications(a, data, len, 6);
    assert_int_equal(
        pc_metrics_get(metrics, "popcast_agent_refused_total", "reason=\"invalid\"") - invalid0, 2);
    assert_int_equal(
        pc_metrics_get(metrics, "popcast_agent_refused_total", "reason=\"bad_signature\"") -
            forged0,
        1);
    assert_int_equal(pc_applier_applied_seq(a), 3);
    assert_int_equal(fake_live_version(&rt.base, "a"), 1);
    assert_int_equal(fake_live_version(&rt.base, "b"), 1);
    assert_int_equal(fake_live_version(&rt.base, "c"), 1);
    assert_int_equal(pc_metrics_get(metrics, "popcast_agent_apply_batches_total", NULL), 1);
    /* The tampered entry was not stored: c's version 1 is the genuine one. */
    pc_tenant_state t;
    assert_int_equal(pc_store_get_tenant(store, "c", &t, NULL), PC_OK);
    uint8_t want[PC_HASH_LEN];
    pc_hash(want, "c1", 2);
    assert_memory_equal(t.active_hash, want, PC_HASH_LEN);
    free(p1);
    free(p2);
    free(p3);
    free(p4);
    pc_applier_free(a);
}

/* Entries checked per entry handed in. A wake-up of copies only (the
 * other controllers' copies of entries already applied, or a burst to
 * one tenant with its copies, where no two new entries may group) took
 * every entry left through a run again for each one applied alone: 64
 * copies cost about 2,000 signature checks. Now each entry is checked
 * at most twice (once in the run that could not group it, once alone),
 * and the entry that ended a run once more, as the first of the next. */
static size_t checks_for(pc_applier *a, const step *steps, size_t n, size_t *applied)
{
    built b[16];
    Popcast__Entry *es[16];
    assert_true(n <= 16);
    for (size_t i = 0; i < n; i++) {
        build(&b[i], &steps[i]);
        es[i] = &b[i].e;
    }
    uint64_t before = pc_metrics_get(metrics, "popcast_agent_entry_verifications_total", NULL);
    *applied = (size_t)pc_applier_apply_entries(a, es, n);
    for (size_t i = 0; i < n; i++)
        pc_envelope_signed_clear(&b[i].sm);
    return (size_t)(pc_metrics_get(metrics, "popcast_agent_entry_verifications_total", NULL) -
                    before);
}

static void test_entries_checked_a_bounded_number_of_times(void **state)
{
    (void)state;
    pc_applier *a = applier_new();
    const step a1 = {.tenant = "a", .version = 1, .seq = 1, .body = "a1"};
    const step b1 = {.tenant = "b", .version = 1, .seq = 2, .body = "b1"};
    const step first[] = {a1, b1};
    size_t applied = 0;
    assert_int_equal(checks_for(a, first, 2, &applied), 2); /* one run, grouped */
    assert_int_equal(applied, 2);
    /* 16 copies of what is applied. */
    step copies[16];
    for (size_t i = 0; i < 16; i++)
        copies[i] = i % 2 ? b1 : a1;
    uint64_t dup0 = pc_metrics_get(metrics, "popcast_agent_refused_total", "reason=\"duplicate\"");
    size_t checks = checks_for(a, copies, 16, &applied);
    print_message("16 copies: %zu checks\n", checks);
    assert_int_equal(applied, 0);
    assert_int_equal(
        pc_metrics_get(metrics, "popcast_agent_refused_total", "reason=\"duplicate\"") - dup0, 16);
    assert_true(checks <= 2 * 16);
    /* A burst to one tenant, three copies of each entry: nothing groups. */
    step burst[15];
    for (size_t i = 0; i < 15; i++)
        burst[i] = (step){.tenant = "a", .version = 2 + i / 3, .seq = 3 + i / 3, .body = "a2"};
    checks = checks_for(a, burst, 15, &applied);
    print_message("a burst of 5 entries to one tenant, 3 copies each: %zu checks\n", checks);
    assert_int_equal(applied, 5);
    assert_int_equal(pc_applier_applied_seq(a), 7);
    assert_true(checks <= 2 * 15 + 5);
    pc_applier_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_outcomes_kept_across_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outcomes_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nacked_then_loaded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_is_not_a_nack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nack_that_is_not_an_outcome, setup, teardown),
        cmocka_unit_test_setup_teardown(test_live_when_the_store_is_full, setup_small, teardown),
        cmocka_unit_test_setup_teardown(test_tenants_generation_moves_with_every_change, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_held_version_never_serves, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stage_never_makes_an_older_version_live, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_held_across_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_targets_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_grouped_entries_apply_as_one_by_one, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_messages_in_a_wake_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_entries_checked_a_bounded_number_of_times, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
