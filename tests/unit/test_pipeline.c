/* test_pipeline.c - the controller's write pipeline (controller/pipeline.h):
 * how each kind of change is dispatched, what it answers and what it
 * leaves in the store. Runs the objects the daemon runs, wired as main.c
 * wires them: a pc_store (keep_history) in a temporary directory, a
 * pc_signer holding a fresh root key and a second key, a real single-node
 * pc_cluster (libraft over TCP on loopback) and a pc_pipeline on one uv
 * loop. The loop is driven one iteration at a time until each change is
 * answered, within a bounded number of iterations. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <uv.h>

#include "bundle.h"
#include "change.h"
#include "cluster.h"
#include "envelope.h"
#include "harness.h"
#include "metrics.h"
#include "pipeline.h"
#include "target.h"
#include "registry.h"
#include "signer.h"
#include "store.h"

/* Loop iterations allowed for one wait. Each iteration handles at least
 * one event (raft's heartbeats and the cluster's tick keep the loop busy),
 * so this is a bound on events, generous for sanitizer builds. */
#define MAX_ITERATIONS 5000
#define MAX_OUTCOMES   64

static pc_signing_key root, next_key, stranger;

typedef struct fixture fixture;

/* What one change's done callback saw. */
typedef struct outcome {
    fixture *f;
    int calls;
    pc_change_kind kind;
    pc_change_result r;
} outcome;

struct fixture {
    char dir[256], raft_dir[320];
    char raft_address[64];
    uv_loop_t loop;
    bool loop_open;
    pc_store *store;
    pc_signer *signer;
    pc_cluster *cluster;
    pc_cluster *stopped_cluster; /* freed once the loop has drained */
    pc_pipeline *pipeline;
    pc_pipeline *extra;  /* a second pipeline on the same cluster */
    pc_metrics *metrics; /* the fixture pipeline's */
    /* Every change handed to a pipeline has a slot here, so that a done
     * called twice, or late, is counted (and never writes to a dead
     * stack frame). */
    outcome outcomes[MAX_OUTCOMES];
    int submitted, answered;
};

static void on_done(pc_change *c, const pc_change_result *r)
{
    outcome *o = c->arg;
    o->calls++;
    o->kind = c->kind;
    o->r = *r;
    o->f->answered++;
}

/* Loop iterations until *flag (an int) is non-zero; false if the bound
 * was hit. */
static bool run_until_int(fixture *f, const int *flag)
{
    for (int i = 0; i < MAX_ITERATIONS && *flag == 0; i++)
        uv_run(&f->loop, UV_RUN_ONCE);
    return *flag != 0;
}

static bool run_until_ready(fixture *f)
{
    for (int i = 0; i < MAX_ITERATIONS && !pc_cluster_ready_to_write(f->cluster); i++)
        uv_run(&f->loop, UV_RUN_ONCE);
    return pc_cluster_ready_to_write(f->cluster);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    *state = f;
    pc_test_tmpdir(f->dir, sizeof(f->dir), "pipeline");
    snprintf(f->raft_dir, sizeof(f->raft_dir), "%s/raft", f->dir);
    assert_int_equal(mkdir(f->raft_dir, 0700), 0);
    pc_err err;
    pc_store_options sopt = {.keep_history = true};
    if (pc_store_open(&f->store, f->dir, &sopt, &err) != PC_OK)
        fail_msg("store: %s", err.msg);
    pc_signing_key held[] = {root, next_key};
    int rc = pc_signer_new(&f->signer, f->store, held, 2, NULL, &err);
    pc_signing_key_wipe(&held[0]);
    pc_signing_key_wipe(&held[1]);
    if (rc != PC_OK)
        fail_msg("signer: %s", err.msg);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->loop_open = true;
    snprintf(f->raft_address, sizeof(f->raft_address), "127.0.0.1:%d", pc_test_free_port());
    pc_cluster_options copt = {.loop = &f->loop,
                               .store = f->store,
                               .raft_dir = f->raft_dir,
                               .scratch_dir = f->dir,
                               .id = 1,
                               .raft_address = f->raft_address,
                               .api_url = "http://127.0.0.1:1",
                               .election_ms = 100,
                               .heartbeat_ms = 20};
    if (pc_cluster_start(&f->cluster, &copt, &err) != PC_OK)
        fail_msg("cluster: %s", err.msg);
    f->metrics = pc_metrics_new();
    assert_non_null(f->metrics);
    pc_pipeline_options popt = {.max_pending = 16,
                                .batch_max_changes = 8,
                                .batch_max_bytes = 1 << 20,
                                .metrics = f->metrics};
    if (pc_pipeline_new(&f->pipeline, &f->loop, f->store, f->signer, f->cluster, &popt, &err) !=
        PC_OK)
        fail_msg("pipeline: %s", err.msg);
    if (!run_until_ready(f))
        fail_msg("the single-node cluster did not become ready to write");
    return 0;
}

static void cluster_stopped(void *arg)
{
    fixture *f = arg;
    f->stopped_cluster = f->cluster;
    f->cluster = NULL;
    pc_pipeline_close(f->pipeline);
    f->pipeline = NULL;
}

/* Stops the cluster, then closes the pipeline (as main.c does), and runs
 * the loop until every handle is closed. */
static void fixture_cleanup(fixture *f)
{
    if (f->loop_open) {
        /* A handle left open would keep the loop waiting for ever. */
        pc_pipeline_close(f->extra);
        f->extra = NULL;
        if (f->pipeline != NULL && f->cluster != NULL)
            pc_pipeline_shutdown(f->pipeline);
        if (f->cluster != NULL)
            pc_cluster_stop(f->cluster, cluster_stopped, f);
        else if (f->pipeline != NULL)
            cluster_stopped(f);
        for (int i = 0; i < MAX_ITERATIONS && uv_loop_alive(&f->loop); i++)
            uv_run(&f->loop, UV_RUN_ONCE);
        assert_false(uv_loop_alive(&f->loop));
        assert_null(f->pipeline);
        assert_int_equal(uv_loop_close(&f->loop), 0);
        f->loop_open = false;
        pc_cluster_free(f->stopped_cluster);
        f->stopped_cluster = NULL;
    }
    pc_signer_free(f->signer);
    f->signer = NULL;
    pc_metrics_free(f->metrics);
    f->metrics = NULL;
    pc_store_close(f->store);
    f->store = NULL;
    if (f->dir[0] != '\0')
        pc_test_rm_rf(f->dir);
}

static int teardown(void **state)
{
    fixture *f = *state;
    fixture_cleanup(f);
    /* Every change handed over was answered exactly once, including the
     * ones answered by shutdown, and none late. */
    int submitted = f->submitted, answered = f->answered;
    int bad = -1;
    for (int i = 0; i < f->submitted && i < MAX_OUTCOMES; i++)
        if (f->outcomes[i].calls != 1)
            bad = i;
    free(f);
    assert_int_equal(answered, submitted);
    assert_int_equal(bad, -1);
    return 0;
}

/* A slot for the next change's answer. */
static outcome *slot(fixture *f, pc_change *c)
{
    assert_true(f->submitted < MAX_OUTCOMES);
    outcome *o = &f->outcomes[f->submitted];
    o->f = f;
    c->done = on_done;
    c->arg = o;
    return o;
}

/* Submits c to p without running the loop; the change belongs to p. */
static outcome *submit_to(fixture *f, pc_pipeline *p, pc_change *c)
{
    outcome *o = slot(f, c);
    pc_err err;
    if (pc_pipeline_submit(p, c, &err) != PC_OK)
        fail_msg("submit: %s", err.msg);
    f->submitted++;
    return o;
}

/* Submits c to the fixture's pipeline and runs the loop until it is
 * answered. */
static const pc_change_result *run_change(fixture *f, pc_change *c)
{
    outcome *o = submit_to(f, f->pipeline, c);
    if (!run_until_int(f, &o->calls))
        fail_msg("change not answered after %d loop iterations", MAX_ITERATIONS);
    assert_int_equal(o->calls, 1);
    return &o->r;
}

static void expect_rc(const pc_change_result *r, int rc)
{
    if (r->rc != rc)
        fail_msg("expected %s, got %s: %s", pc_err_name(rc), pc_err_name(r->rc), r->err.msg);
    if (rc != PC_OK)
        assert_int_equal(r->err.code, rc);
}

static uint64_t applied_seq(fixture *f)
{
    uint64_t seq = 0;
    pc_err err;
    assert_int_equal(pc_store_applied_seq(f->store, &seq, &err), PC_OK);
    return seq;
}

static pc_tenant_state tenant_state(fixture *f, const char *tenant)
{
    pc_tenant_state t;
    pc_err err;
    if (pc_store_get_tenant(f->store, tenant, &t, &err) != PC_OK)
        fail_msg("tenant %s: %s", tenant, err.msg);
    return t;
}

static void expect_no_tenant(fixture *f, const char *tenant)
{
    pc_tenant_state t;
    pc_err err;
    assert_int_equal(pc_store_get_tenant(f->store, tenant, &t, &err), PC_E_NOTFOUND);
}

/* A bundle archive holding one Lua file, malloc'd. */
static uint8_t *lua_bundle(const char *source, size_t *len)
{
    uint8_t *out = NULL;
    pc_err err;
    if (pc_bundle_pack_single("main.lua", (const uint8_t *)source, strlen(source), &out, len,
                              &err) != PC_OK)
        fail_msg("pack: %s", err.msg);
    return out;
}

/* A DEPLOY of a copy of archive. */
static pc_change *deploy_change(const char *tenant, const uint8_t *archive, size_t len)
{
    pc_change *c = pc_change_new(PC_CHANGE_DEPLOY, tenant);
    assert_non_null(c);
    c->u.deploy.bundle = malloc(len);
    assert_non_null(c->u.deploy.bundle);
    memcpy(c->u.deploy.bundle, archive, len);
    c->u.deploy.bundle_len = len;
    snprintf(c->u.deploy.entrypoint, sizeof(c->u.deploy.entrypoint), "main.lua");
    snprintf(c->u.deploy.runtime, sizeof(c->u.deploy.runtime), "lua");
    return c;
}

/* Deploys a small Lua handler; returns the result's version. */
static uint64_t deploy(fixture *f, const char *tenant, const char *body)
{
    char source[256];
    snprintf(source, sizeof(source), "return function() return '%s' end\n", body);
    size_t len = 0;
    uint8_t *archive = lua_bundle(source, &len);
    const pc_change_result *r = run_change(f, deploy_change(tenant, archive, len));
    free(archive);
    expect_rc(r, PC_OK);
    return r->version;
}

static pc_change *rollback_change(const char *tenant, uint64_t to)
{
    pc_change *c = pc_change_new(PC_CHANGE_ROLLBACK, tenant);
    assert_non_null(c);
    c->u.rollback.to = to;
    return c;
}

/* The stored signed manifest of seq, verified against {key} alone. */
static Popcast__Manifest *stored_manifest(fixture *f, uint64_t seq, const pc_public_key *key,
                                          int expect)
{
    Popcast__LogRecord *rec = NULL;
    pc_err err;
    if (pc_store_get_log(f->store, seq, &rec, &err) != PC_OK)
        fail_msg("log %llu: %s", (unsigned long long)seq, err.msg);
    assert_non_null(rec->signed_);
    pc_keyring ring = {.count = 0};
    assert_int_equal(pc_keyring_add(&ring, key, &err), PC_OK);
    Popcast__Manifest *m = NULL;
    int rc = pc_envelope_verify_manifest(&ring, rec->signed_, &m, &err);
    popcast__log_record__free_unpacked(rec, NULL);
    if (rc != expect)
        fail_msg("seq %llu: expected %s, got %s: %s", (unsigned long long)seq, pc_err_name(expect),
                 pc_err_name(rc), err.msg);
    return m;
}

/* Every kind has its facts; anything else is "unknown". */
static void test_kind_table(void **state)
{
    (void)state;
    for (int k = 0; k < PC_CHANGE_KIND_COUNT; k++) {
        const pc_change_kind_info *info = pc_change_kind_get((pc_change_kind)k);
        assert_non_null(info);
        assert_non_null(info->name);
        assert_true(info->name[0] != '\0');
        assert_string_not_equal(info->name, "unknown");
        assert_true(info->success_status == 200 || info->success_status == 201);
        bool tenant = k == PC_CHANGE_DEPLOY || k == PC_CHANGE_ROLLBACK || k == PC_CHANGE_DELETE ||
                      k == PC_CHANGE_STAGE;
        assert_int_equal(info->tenant, tenant);
        for (int j = 0; j < k; j++)
            assert_string_not_equal(info->name, pc_change_kind_get((pc_change_kind)j)->name);
    }
    assert_string_equal(pc_change_kind_get(PC_CHANGE_DEPLOY)->name, "deploy");
    assert_int_equal(pc_change_kind_get(PC_CHANGE_DEPLOY)->success_status, 201);
    assert_int_equal(pc_change_kind_get(PC_CHANGE_DELETE)->success_status, 200);
    const pc_change_kind_info *unknown = pc_change_kind_get(PC_CHANGE_KIND_COUNT);
    assert_non_null(unknown);
    assert_string_equal(unknown->name, "unknown");
    assert_false(unknown->tenant);
    assert_string_equal(pc_change_kind_get((pc_change_kind)(PC_CHANGE_KIND_COUNT + 7))->name,
                        "unknown");
}

/* A deploy is versioned, signed by the root key (no rotation yet),
 * committed and stored with its bundle. */
static void test_deploy(void **state)
{
    fixture *f = *state;
    assert_int_equal(applied_seq(f), 0);
    const char *source = "return function() return 'v1' end\n";
    size_t len = 0;
    uint8_t *archive = lua_bundle(source, &len);
    uint8_t hash[PC_HASH_LEN];
    pc_hash(hash, archive, len);

    const pc_change_result *r = run_change(f, deploy_change("acme", archive, len));
    expect_rc(r, PC_OK);
    assert_int_equal(r->version, 1);
    assert_int_equal(r->seq, 1);
    assert_int_equal(r->rollback_of, 0);
    assert_int_equal(r->bundle_size, len);
    assert_memory_equal(r->hash, hash, PC_HASH_LEN);
    assert_string_equal(r->entrypoint, "main.lua");
    assert_string_equal(r->runtime, "lua");
    assert_true(r->created_unix_ms > 0);

    assert_int_equal(applied_seq(f), 1);
    pc_tenant_state t = tenant_state(f, "acme");
    assert_int_equal(t.active_version, 1);
    assert_int_equal(t.active_seq, 1);
    assert_int_equal(t.last_version, 1);
    assert_false(t.deleted);
    assert_memory_equal(t.active_hash, hash, PC_HASH_LEN);
    uint64_t seq = 0;
    pc_err err;
    assert_int_equal(pc_store_version_seq(f->store, "acme", 1, &seq, &err), PC_OK);
    assert_int_equal(seq, 1);
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    assert_int_equal(pc_store_get_blob(f->store, hash, &blob, &blob_len, &err), PC_OK);
    assert_int_equal(blob_len, len);
    assert_memory_equal(blob, archive, len);
    free(blob);

    Popcast__Manifest *m = stored_manifest(f, 1, &root.pub, PC_OK);
    assert_int_equal(m->kind, POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY);
    assert_string_equal(m->tenant, "acme");
    assert_int_equal(m->version, 1);
    assert_int_equal(m->seq, 1);
    assert_int_equal(m->bundle_size, len);
    assert_int_equal(m->bundle_hash.len, PC_HASH_LEN);
    assert_memory_equal(m->bundle_hash.data, hash, PC_HASH_LEN);
    assert_string_equal(m->entrypoint, "main.lua");
    assert_string_equal(m->runtime, "lua");
    assert_int_equal(m->created_unix_ms, r->created_unix_ms);
    popcast__manifest__free_unpacked(m, NULL);
    /* Only the root key signs before any rotation. */
    assert_null(stored_manifest(f, 1, &next_key.pub, PC_E_UNTRUSTED_KEY));
    free(archive);
}

/* A rollback brings back an earlier version's content as a new version;
 * one that cannot happen consumes no seq and changes nothing. */
static void test_rollback(void **state)
{
    fixture *f = *state;
    assert_int_equal(deploy(f, "acme", "v1"), 1);
    pc_tenant_state before = tenant_state(f, "acme");

    const pc_change_result *r = run_change(f, rollback_change("acme", 1));
    expect_rc(r, PC_OK);
    assert_int_equal(r->version, 2);
    assert_int_equal(r->seq, 2);
    assert_int_equal(r->rollback_of, 1);
    assert_memory_equal(r->hash, before.active_hash, PC_HASH_LEN);
    assert_string_equal(r->entrypoint, "main.lua");
    assert_string_equal(r->runtime, "lua");
    assert_int_equal(applied_seq(f), 2);
    pc_tenant_state t = tenant_state(f, "acme");
    assert_int_equal(t.active_version, 2);
    assert_int_equal(t.active_seq, 2);
    assert_int_equal(t.last_version, 2);
    assert_memory_equal(t.active_hash, before.active_hash, PC_HASH_LEN);
    Popcast__Manifest *m = stored_manifest(f, 2, &root.pub, PC_OK);
    assert_int_equal(m->kind, POPCAST__ENTRY_KIND__ENTRY_KIND_ROLLBACK);
    assert_int_equal(m->rollback_of, 1);
    assert_int_equal(m->version, 2);
    assert_memory_equal(m->bundle_hash.data, before.active_hash, PC_HASH_LEN);
    popcast__manifest__free_unpacked(m, NULL);

    /* To a version the tenant never had. */
    r = run_change(f, rollback_change("acme", 7));
    expect_rc(r, PC_E_NOTFOUND);
    assert_non_null(strstr(r->err.msg, "no version 7"));
    assert_int_equal(applied_seq(f), 2);
    t = tenant_state(f, "acme");
    assert_int_equal(t.active_version, 2);
    assert_int_equal(t.last_version, 2);

    /* Of a tenant that never existed. */
    r = run_change(f, rollback_change("nobody", 1));
    expect_rc(r, PC_E_NOTFOUND);
    assert_non_null(strstr(r->err.msg, "not found"));
    assert_int_equal(applied_seq(f), 2);
    expect_no_tenant(f, "nobody");

    /* No seq was consumed by the failures: the next change follows. */
    r = run_change(f, rollback_change("acme", 1));
    expect_rc(r, PC_OK);
    assert_int_equal(r->seq, 3);
    assert_int_equal(r->version, 3);
    assert_int_equal(applied_seq(f), 3);
}

static pc_change *stage_change(const char *tenant, uint64_t version, const char *pop)
{
    pc_change *c = pc_change_new(PC_CHANGE_STAGE, tenant);
    assert_non_null(c);
    c->u.stage.version = version;
    if (pop != NULL) {
        c->target = pc_target_new();
        assert_int_equal(pc_target_add_pop(c->target, pop, NULL), PC_OK);
    }
    return c;
}

/* A deploy carries its target into the signed manifest; a stage is an
 * entry of the active version only (its own seq, no new version), and a
 * stage of a version a newer one overtook, of an unknown or deleted
 * tenant, is refused and takes no seq. */
static void test_targets_and_stages(void **state)
{
    fixture *f = *state;
    char source[] = "return function() return 'x' end\n";
    size_t len = 0;
    uint8_t *archive = lua_bundle(source, &len);
    pc_change *c = deploy_change("acme", archive, len);
    c->target = pc_target_new(); /* nobody: an upload */
    const pc_change_result *r = run_change(f, c);
    expect_rc(r, PC_OK);
    assert_int_equal(r->version, 1);
    Popcast__Manifest *m = stored_manifest(f, 1, &root.pub, PC_OK);
    assert_non_null(m->target);
    assert_int_equal(m->target->n_pops + m->target->n_agents + m->target->permille, 0);
    popcast__manifest__free_unpacked(m, NULL);

    r = run_change(f, stage_change("acme", 1, "ams"));
    expect_rc(r, PC_OK);
    assert_int_equal(r->version, 1);
    assert_int_equal(r->seq, 2);
    m = stored_manifest(f, 2, &root.pub, PC_OK);
    assert_int_equal(m->kind, POPCAST__ENTRY_KIND__ENTRY_KIND_STAGE);
    assert_int_equal(m->version, 1);
    assert_int_equal(m->target->n_pops, 1);
    assert_string_equal(m->target->pops[0], "ams");
    popcast__manifest__free_unpacked(m, NULL);
    pc_tenant_state t = tenant_state(f, "acme");
    assert_int_equal(t.active_version, 1);
    assert_int_equal(t.last_version, 1);
    assert_int_equal(t.stage_seq, 2);

    /* The next deploy takes the next version; staging the old one is 409. */
    r = run_change(f, deploy_change("acme", archive, len));
    expect_rc(r, PC_OK);
    assert_int_equal(r->version, 2);
    assert_int_equal(tenant_state(f, "acme").stage_seq, 0);
    r = run_change(f, stage_change("acme", 1, NULL));
    expect_rc(r, PC_E_STALE_VERSION);
    r = run_change(f, stage_change("nobody", 1, NULL));
    expect_rc(r, PC_E_NOTFOUND);
    assert_int_equal(applied_seq(f), 3);
    free(archive);
}

/* A delete is a version without content; it can happen once, and cannot
 * be rolled back to. */
static void test_delete(void **state)
{
    fixture *f = *state;
    assert_int_equal(deploy(f, "acme", "v1"), 1);
    expect_rc(run_change(f, rollback_change("acme", 1)), PC_OK);

    const pc_change_result *r = run_change(f, pc_change_new(PC_CHANGE_DELETE, "acme"));
    expect_rc(r, PC_OK);
    assert_int_equal(r->version, 3);
    assert_int_equal(r->seq, 3);
    assert_int_equal(r->bundle_size, 0);
    assert_int_equal(applied_seq(f), 3);
    pc_tenant_state t = tenant_state(f, "acme");
    assert_true(t.deleted);
    assert_int_equal(t.active_version, 0);
    assert_int_equal(t.last_version, 3);
    Popcast__Manifest *m = stored_manifest(f, 3, &root.pub, PC_OK);
    assert_int_equal(m->kind, POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE);
    assert_int_equal(m->version, 3);
    popcast__manifest__free_unpacked(m, NULL);

    r = run_change(f, pc_change_new(PC_CHANGE_DELETE, "acme"));
    expect_rc(r, PC_E_NOTFOUND);
    assert_non_null(strstr(r->err.msg, "already deleted"));
    assert_int_equal(applied_seq(f), 3);

    r = run_change(f, rollback_change("acme", 3));
    expect_rc(r, PC_E_INVALID);
    assert_non_null(strstr(r->err.msg, "delete"));
    assert_int_equal(applied_seq(f), 3);
    t = tenant_state(f, "acme");
    assert_true(t.deleted);
    assert_int_equal(t.last_version, 3);

    r = run_change(f, pc_change_new(PC_CHANGE_DELETE, "nobody"));
    expect_rc(r, PC_E_NOTFOUND);
    assert_int_equal(applied_seq(f), 3);
    expect_no_tenant(f, "nobody");
}

static pc_change *token_create(const char *secret, const char *name, const char *tenant)
{
    pc_change *c = pc_change_new(PC_CHANGE_TOKEN_CREATE, NULL);
    assert_non_null(c);
    snprintf(c->u.token.secret, sizeof(c->u.token.secret), "%s", secret);
    pc_hash(c->u.token.hash, secret, strlen(secret));
    char hex[PC_HEX_HASH_LEN];
    pc_hex(hex, c->u.token.hash, PC_HASH_LEN);
    snprintf(c->u.token.id, sizeof(c->u.token.id), "%.16s", hex);
    snprintf(c->u.token.name, sizeof(c->u.token.name), "%s", name);
    snprintf(c->u.token.tenants[0], sizeof(c->u.token.tenants[0]), "%s", tenant);
    c->u.token.n_tenants = 1;
    return c;
}

static pc_change *token_revoke(const char *id)
{
    pc_change *c = pc_change_new(PC_CHANGE_TOKEN_REVOKE, NULL);
    assert_non_null(c);
    snprintf(c->u.token.id, sizeof(c->u.token.id), "%s", id);
    return c;
}

/* Tokens go through the log into the registry; they are not signed
 * entries, so they take no seq. */
static void test_tokens(void **state)
{
    fixture *f = *state;
    const char *secret = "pct_0123456789abcdef0123456789abcdef";
    uint8_t hash[PC_HASH_LEN];
    pc_hash(hash, secret, strlen(secret));
    char hex[PC_HEX_HASH_LEN], id[17];
    pc_hex(hex, hash, PC_HASH_LEN);
    snprintf(id, sizeof(id), "%.16s", hex);

    const pc_change_result *r = run_change(f, token_create(secret, "ci", "acme"));
    expect_rc(r, PC_OK);
    assert_int_equal(r->seq, 0);
    assert_int_equal(applied_seq(f), 0);
    Popcast__TokenRecord *t = NULL;
    pc_err err;
    assert_int_equal(pc_registry_get_token(f->store, hash, &t, &err), PC_OK);
    assert_string_equal(t->id, id);
    assert_string_equal(t->name, "ci");
    assert_int_equal(t->n_tenants, 1);
    assert_string_equal(t->tenants[0], "acme");
    assert_false(t->revoked);
    assert_true(t->created_unix_ms > 0);
    int64_t created = t->created_unix_ms;
    popcast__token_record__free_unpacked(t, NULL);

    r = run_change(f, token_revoke(id));
    expect_rc(r, PC_OK);
    assert_int_equal(pc_registry_find_token(f->store, id, &t, &err), PC_OK);
    assert_true(t->revoked);
    assert_string_equal(t->name, "ci");
    assert_int_equal(t->n_tenants, 1);
    assert_string_equal(t->tenants[0], "acme");
    assert_int_equal(t->created_unix_ms, created);
    assert_int_equal(t->hash.len, PC_HASH_LEN);
    assert_memory_equal(t->hash.data, hash, PC_HASH_LEN);
    popcast__token_record__free_unpacked(t, NULL);

    r = run_change(f, token_revoke("00000000deadbeef"));
    expect_rc(r, PC_E_NOTFOUND);
    assert_int_equal(pc_registry_find_token(f->store, "00000000deadbeef", &t, &err), PC_E_NOTFOUND);
    assert_int_equal(applied_seq(f), 0);
}

static pc_change *agent_change(pc_change_kind kind, const char *id, const uint8_t *pk)
{
    pc_change *c = pc_change_new(kind, NULL);
    assert_non_null(c);
    snprintf(c->u.agent.id, sizeof(c->u.agent.id), "%s", id);
    if (pk != NULL)
        memcpy(c->u.agent.pk, pk, PC_PK_LEN);
    return c;
}

/* Enrolled agents go through the log into the registry; a revoke keeps
 * the key it revokes. */
static void test_agents(void **state)
{
    fixture *f = *state;
    pc_signing_key agent_key;
    assert_int_equal(pc_keygen(&agent_key), PC_OK);

    const pc_change_result *r =
        run_change(f, agent_change(PC_CHANGE_AGENT_ENROLL, "edge-1", agent_key.pub.pk));
    expect_rc(r, PC_OK);
    Popcast__AgentRecord *a = NULL;
    pc_err err;
    assert_int_equal(pc_registry_get_agent(f->store, "edge-1", &a, &err), PC_OK);
    assert_string_equal(a->agent_id, "edge-1");
    assert_memory_equal(a->public_key.data, agent_key.pub.pk, PC_PK_LEN);
    assert_false(a->revoked);
    int64_t enrolled = a->enrolled_unix_ms;
    assert_true(enrolled > 0);
    popcast__agent_record__free_unpacked(a, NULL);

    r = run_change(f, agent_change(PC_CHANGE_AGENT_REVOKE, "edge-1", NULL));
    expect_rc(r, PC_OK);
    assert_int_equal(pc_registry_get_agent(f->store, "edge-1", &a, &err), PC_OK);
    assert_true(a->revoked);
    assert_memory_equal(a->public_key.data, agent_key.pub.pk, PC_PK_LEN);
    assert_int_equal(a->enrolled_unix_ms, enrolled);
    popcast__agent_record__free_unpacked(a, NULL);

    r = run_change(f, agent_change(PC_CHANGE_AGENT_REVOKE, "edge-9", NULL));
    expect_rc(r, PC_E_NOTFOUND);
    assert_non_null(strstr(r->err.msg, "edge-9"));
    assert_int_equal(pc_registry_get_agent(f->store, "edge-9", &a, &err), PC_E_NOTFOUND);
    assert_int_equal(applied_seq(f), 0);
    pc_signing_key_wipe(&agent_key);
}

/* A binding on first use (the sync server's, docs/security.md) takes an id
 * with no record only: a second binding, for another key, or of an id an
 * operator enrolled or revoked, is refused and changes nothing; an
 * operator's enrollment replaces a binding. */
static void test_agent_first_use(void **state)
{
    fixture *f = *state;
    pc_signing_key k1, k2;
    assert_int_equal(pc_keygen(&k1), PC_OK);
    assert_int_equal(pc_keygen(&k2), PC_OK);
    pc_change *c = agent_change(PC_CHANGE_AGENT_ENROLL, "edge-1", k1.pub.pk);
    c->u.agent.first_use = true;
    expect_rc(run_change(f, c), PC_OK);
    Popcast__AgentRecord *a = NULL;
    pc_err err;
    assert_int_equal(pc_registry_get_agent(f->store, "edge-1", &a, &err), PC_OK);
    assert_true(a->first_use);
    assert_memory_equal(a->public_key.data, k1.pub.pk, PC_PK_LEN);
    popcast__agent_record__free_unpacked(a, NULL);

    c = agent_change(PC_CHANGE_AGENT_ENROLL, "edge-1", k2.pub.pk);
    c->u.agent.first_use = true;
    expect_rc(run_change(f, c), PC_E_EXISTS);
    assert_int_equal(pc_registry_get_agent(f->store, "edge-1", &a, &err), PC_OK);
    assert_memory_equal(a->public_key.data, k1.pub.pk, PC_PK_LEN);
    popcast__agent_record__free_unpacked(a, NULL);

    /* An operator replaces it. */
    expect_rc(run_change(f, agent_change(PC_CHANGE_AGENT_ENROLL, "edge-1", k2.pub.pk)), PC_OK);
    assert_int_equal(pc_registry_get_agent(f->store, "edge-1", &a, &err), PC_OK);
    assert_false(a->first_use);
    assert_memory_equal(a->public_key.data, k2.pub.pk, PC_PK_LEN);
    popcast__agent_record__free_unpacked(a, NULL);

    /* A revoked id stays revoked. */
    expect_rc(run_change(f, agent_change(PC_CHANGE_AGENT_REVOKE, "edge-1", NULL)), PC_OK);
    c = agent_change(PC_CHANGE_AGENT_ENROLL, "edge-1", k1.pub.pk);
    c->u.agent.first_use = true;
    expect_rc(run_change(f, c), PC_E_EXISTS);
    assert_int_equal(pc_registry_get_agent(f->store, "edge-1", &a, &err), PC_OK);
    assert_true(a->revoked);
    popcast__agent_record__free_unpacked(a, NULL);
    pc_signing_key_wipe(&k1);
    pc_signing_key_wipe(&k2);
}

static pc_change *rotate_to(const pc_public_key *k)
{
    pc_change *c = pc_change_new(PC_CHANGE_KEY_ROTATE, NULL);
    assert_non_null(c);
    memcpy(c->u.key.next, k->pk, PC_PK_LEN);
    return c;
}

/* A rotation is a signed entry with a seq; it is refused for a key this
 * controller cannot sign with, or for the key already signing; once
 * committed, the next entry is signed by the new key. */
static void test_key_rotation(void **state)
{
    fixture *f = *state;
    assert_int_equal(deploy(f, "acme", "v1"), 1);

    const pc_change_result *r = run_change(f, rotate_to(&stranger.pub));
    expect_rc(r, PC_E_INVALID);
    assert_non_null(strstr(r->err.msg, "does not hold"));
    assert_int_equal(applied_seq(f), 1);

    r = run_change(f, rotate_to(&root.pub));
    expect_rc(r, PC_E_INVALID);
    assert_non_null(strstr(r->err.msg, "already the signing key"));
    assert_int_equal(applied_seq(f), 1);

    pc_public_key cur;
    uint64_t since = 99;
    pc_err err;
    assert_int_equal(pc_signer_current_public(f->signer, &cur, &since, &err), PC_OK);
    assert_memory_equal(cur.pk, root.pub.pk, PC_PK_LEN);
    assert_int_equal(since, 0);

    r = run_change(f, rotate_to(&next_key.pub));
    expect_rc(r, PC_OK);
    assert_int_equal(r->seq, 2);
    assert_int_equal(applied_seq(f), 2);
    /* Signed by the key it replaces. */
    Popcast__Manifest *m = stored_manifest(f, 2, &root.pub, PC_OK);
    assert_int_equal(m->kind, POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION);
    assert_int_equal(m->next_public_key.len, PC_PK_LEN);
    assert_memory_equal(m->next_public_key.data, next_key.pub.pk, PC_PK_LEN);
    popcast__manifest__free_unpacked(m, NULL);
    assert_int_equal(pc_signer_current_public(f->signer, &cur, &since, &err), PC_OK);
    assert_memory_equal(cur.pk, next_key.pub.pk, PC_PK_LEN);
    assert_int_equal(since, 2);

    /* The next deploy is signed by the new key, and only by it. */
    assert_int_equal(deploy(f, "acme", "v2"), 2);
    assert_int_equal(applied_seq(f), 3);
    m = stored_manifest(f, 3, &next_key.pub, PC_OK);
    assert_int_equal(m->kind, POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY);
    assert_int_equal(m->version, 2);
    assert_int_equal(m->seq, 3);
    popcast__manifest__free_unpacked(m, NULL);
    assert_null(stored_manifest(f, 3, &root.pub, PC_E_UNTRUSTED_KEY));

    /* The new key is now the current one: rotating to it again is
     * refused. */
    r = run_change(f, rotate_to(&next_key.pub));
    expect_rc(r, PC_E_INVALID);
    assert_int_equal(applied_seq(f), 3);
}

/* A change of no known kind is refused without touching the store, and
 * the pipeline goes on with the next change. */
static void test_unknown_kind(void **state)
{
    fixture *f = *state;
    pc_change *c = pc_change_new(PC_CHANGE_KIND_COUNT, "acme");
    assert_non_null(c);
    const pc_change_result *r = run_change(f, c);
    expect_rc(r, PC_E_INTERNAL);
    assert_non_null(strstr(r->err.msg, "unknown change kind"));
    assert_int_equal(r->seq, 0);
    assert_int_equal(r->version, 0);
    assert_int_equal(applied_seq(f), 0);
    expect_no_tenant(f, "acme");

    assert_int_equal(deploy(f, "acme", "v1"), 1);
    assert_int_equal(applied_seq(f), 1);
}

/* Past max_pending queued changes, submit refuses and the caller keeps
 * its change. */
static uint64_t counter(fixture *f, const char *name)
{
    pc_metric *m = pc_metrics_counter(f->metrics, name, NULL, NULL);
    assert_non_null(m);
    return m->value;
}

/* Group commit: tenant changes queued together are committed in one raft
 * command, in order, each at its own seq with its own version and
 * signature, each answered with its own result; a change that cannot be
 * made is refused alone and takes no seq; a rollback or a delete waits
 * for the next command when its tenant is in this one (a refusal rests on
 * committed state only); other kinds go alone. */
static void test_group_commit(void **state)
{
    fixture *f = *state;
    assert_int_equal(deploy(f, "acme", "one"), 1);
    assert_int_equal(counter(f, "popcast_controller_commit_commands_total"), 1);
    size_t len = 0;
    uint8_t *archive = lua_bundle("return function() return 'x' end\n", &len);
    /* Queued while nothing runs the loop: one drain sees them all. */
    outcome *o[10];
    o[0] = submit_to(f, f->pipeline, deploy_change("acme", archive, len));     /* v2 seq 2 */
    o[1] = submit_to(f, f->pipeline, deploy_change("beta", archive, len));     /* v1 seq 3 */
    o[2] = submit_to(f, f->pipeline, pc_change_new(PC_CHANGE_DELETE, "acme")); /* next: v3 seq 4 */
    o[3] = submit_to(f, f->pipeline, pc_change_new(PC_CHANGE_DELETE, "acme")); /* next: refused */
    o[4] = submit_to(f, f->pipeline, pc_change_new(PC_CHANGE_DELETE, "zeta")); /* refused */
    o[5] = submit_to(f, f->pipeline, deploy_change("gamma", archive, len));    /* v1 seq 5 */
    o[6] = submit_to(f, f->pipeline, rollback_change("beta", 1));              /* v2 seq 6 */
    o[7] = submit_to(f, f->pipeline, deploy_change("acme", archive, len));     /* v4 seq 7 */
    o[8] = submit_to(f, f->pipeline,
                     token_create("pct_00112233445566778899aabbccddeeff", "t", "acme")); /* alone */
    o[9] = submit_to(f, f->pipeline, deploy_change("delta", archive, len)); /* v1 seq 8 */
    free(archive);
    if (!run_until_int(f, &o[9]->calls))
        fail_msg("the last change was not answered");
    struct {
        int rc;
        uint64_t seq, version;
    } want[10] = {
        {PC_OK, 2, 2}, {PC_OK, 3, 1}, {PC_OK, 4, 3}, {PC_E_NOTFOUND, 0, 0}, {PC_E_NOTFOUND, 0, 0},
        {PC_OK, 5, 1}, {PC_OK, 6, 2}, {PC_OK, 7, 4}, {PC_OK, 0, 0},         {PC_OK, 8, 1},
    };
    for (int i = 0; i < 10; i++) {
        assert_int_equal(o[i]->calls, 1);
        if (o[i]->r.rc != want[i].rc || o[i]->r.seq != want[i].seq ||
            o[i]->r.version != want[i].version)
            fail_msg("change %d: %s seq %llu version %llu, expected %s seq %llu version %llu (%s)",
                     i, pc_err_name(o[i]->r.rc), (unsigned long long)o[i]->r.seq,
                     (unsigned long long)o[i]->r.version, pc_err_name(want[i].rc),
                     (unsigned long long)want[i].seq, (unsigned long long)want[i].version,
                     o[i]->r.err.msg);
    }
    assert_non_null(strstr(o[3]->r.err.msg, "already deleted"));
    assert_int_equal(o[6]->r.rollback_of, 1);
    /* {1}, {2,3}, {4}, {5,6,7}, {8}: the second delete of acme waits for
     * the first to commit, and is then refused on committed state. */
    assert_int_equal(counter(f, "popcast_controller_commit_commands_total"), 5);
    assert_int_equal(counter(f, "popcast_controller_commit_changes_total"), 8);
    assert_int_equal(applied_seq(f), 8);
    /* Every entry is in the log, signed alone, at its seq. */
    const char *tenant[] = {NULL, "acme", "acme", "beta", "acme", "gamma", "beta", "acme", "delta"};
    for (uint64_t seq = 1; seq <= 8; seq++) {
        Popcast__Manifest *m = stored_manifest(f, seq, &root.pub, PC_OK);
        assert_int_equal(m->seq, seq);
        assert_string_equal(m->tenant, tenant[seq]);
        popcast__manifest__free_unpacked(m, NULL);
    }
    pc_tenant_state t = tenant_state(f, "acme");
    assert_int_equal(t.last_version, 4);
    assert_int_equal(t.active_version, 4);
    assert_false(t.deleted);
    t = tenant_state(f, "beta");
    assert_int_equal(t.active_version, 2);
    expect_no_tenant(f, "zeta");
}

/* Idempotency keys (pipeline.h): queued together, the first change with
 * a key is made; a repeat behind it in the same batch waits for the next
 * batch and is answered with the first one's result; the same key asking
 * for something else is refused; keys are per tenant; a key on another
 * kind of change cannot be set. Asserted on commands and seqs, so the
 * waits are seen, not assumed. */
static pc_change *keyed(pc_change *c, const char *key)
{
    pc_err err;
    if (pc_change_set_idempotency(c, key, &err) != PC_OK)
        fail_msg("set key %s: %s", key, err.msg);
    return c;
}

static void test_idempotency_keys(void **state)
{
    fixture *f = *state;
    size_t len = 0, other_len = 0;
    uint8_t *archive = lua_bundle("return function() return 'x' end\n", &len);
    uint8_t *other = lua_bundle("return function() return 'y' end\n", &other_len);
    outcome *o[7];
    o[0] = submit_to(f, f->pipeline, keyed(deploy_change("acme", archive, len), "k1")); /* v1 */
    o[1] = submit_to(f, f->pipeline, deploy_change("beta", archive, len));              /* v1 */
    o[2] = submit_to(f, f->pipeline, keyed(deploy_change("acme", archive, len), "k1")); /* replay */
    o[3] = submit_to(f, f->pipeline, keyed(deploy_change("acme", other, other_len), "k1"));
    o[4] = submit_to(f, f->pipeline, keyed(deploy_change("gamma", archive, len), "k1")); /* v1 */
    o[5] = submit_to(f, f->pipeline, keyed(pc_change_new(PC_CHANGE_DELETE, "beta"), "d1"));
    o[6] = submit_to(f, f->pipeline, keyed(pc_change_new(PC_CHANGE_DELETE, "beta"), "d1"));
    if (!run_until_int(f, &o[6]->calls))
        fail_msg("the last change was not answered");
    for (int i = 0; i < 7; i++)
        assert_int_equal(o[i]->calls, 1);
    expect_rc(&o[0]->r, PC_OK);
    assert_false(o[0]->r.replayed);
    expect_rc(&o[1]->r, PC_OK);
    /* The repeat: the first one's answer, nothing new. */
    expect_rc(&o[2]->r, PC_OK);
    assert_true(o[2]->r.replayed);
    assert_int_equal(o[2]->r.seq, o[0]->r.seq);
    assert_int_equal(o[2]->r.version, 1);
    assert_memory_equal(o[2]->r.hash, o[0]->r.hash, PC_HASH_LEN);
    assert_string_equal(o[2]->r.entrypoint, "main.lua");
    expect_rc(&o[3]->r, PC_E_EXISTS);
    assert_non_null(strstr(o[3]->r.err.msg, "used for another request"));
    expect_rc(&o[4]->r, PC_OK);
    assert_false(o[4]->r.replayed);
    expect_rc(&o[5]->r, PC_OK);
    expect_rc(&o[6]->r, PC_OK);
    assert_true(o[6]->r.replayed);
    assert_int_equal(o[6]->r.seq, o[5]->r.seq);
    /* {acme v1, beta v1} then the repeat waits: {gamma, delete beta}
     * after answering it and refusing o[3] on committed state; the second
     * delete waits for the first (its key is in that batch). */
    assert_int_equal(applied_seq(f), 4);
    assert_int_equal(counter(f, "popcast_controller_commit_commands_total"), 2);
    assert_int_equal(tenant_state(f, "acme").last_version, 1);
    assert_true(tenant_state(f, "beta").deleted);
    /* Keys only on tenant changes, and only valid ones. */
    pc_err err;
    pc_change *t = token_create("pct_00112233445566778899aabbccddeeff", "t", "acme");
    assert_int_equal(pc_change_set_idempotency(t, "k1", &err), PC_E_INVALID);
    pc_change_free(t);
    pc_change *d = pc_change_new(PC_CHANGE_DELETE, "acme");
    assert_int_equal(pc_change_set_idempotency(d, "a/b", &err), PC_E_INVALID);
    assert_string_equal(d->idempotency_key, "");
    pc_change_free(d);
    free(archive);
    free(other);
}

/* With one change per command, the same queue commits one by one. */
static void test_group_commit_off(void **state)
{
    fixture *f = *state;
    pc_err err;
    pc_pipeline_options popt = {.max_pending = 8, .batch_max_changes = 1, .metrics = f->metrics};
    assert_int_equal(
        pc_pipeline_new(&f->extra, &f->loop, f->store, f->signer, f->cluster, &popt, &err), PC_OK);
    size_t len = 0;
    uint8_t *archive = lua_bundle("return function() return 'x' end\n", &len);
    outcome *o[4];
    for (int i = 0; i < 4; i++)
        o[i] = submit_to(f, f->extra, deploy_change("acme", archive, len));
    free(archive);
    if (!run_until_int(f, &o[3]->calls))
        fail_msg("the last change was not answered");
    for (int i = 0; i < 4; i++) {
        expect_rc(&o[i]->r, PC_OK);
        assert_int_equal(o[i]->r.seq, (uint64_t)i + 1);
        assert_int_equal(o[i]->r.version, (uint64_t)i + 1);
    }
    assert_int_equal(counter(f, "popcast_controller_commit_commands_total"), 4);
}

/* The bytes limit: a change that would take the command over it starts
 * the next one; a change larger than the limit still goes, alone. */
static void test_group_commit_bytes(void **state)
{
    fixture *f = *state;
    pc_err err;
    size_t len = 0;
    uint8_t *archive = lua_bundle("return function() return 'x' end\n", &len);
    pc_pipeline_options popt = {.max_pending = 8,
                                .batch_max_changes = 8,
                                .batch_max_bytes = 2 * len,
                                .metrics = f->metrics};
    assert_int_equal(
        pc_pipeline_new(&f->extra, &f->loop, f->store, f->signer, f->cluster, &popt, &err), PC_OK);
    outcome *o[5];
    for (int i = 0; i < 5; i++)
        o[i] = submit_to(f, f->extra, deploy_change("acme", archive, len));
    free(archive);
    if (!run_until_int(f, &o[4]->calls))
        fail_msg("the last change was not answered");
    for (int i = 0; i < 5; i++) {
        expect_rc(&o[i]->r, PC_OK);
        assert_int_equal(o[i]->r.seq, (uint64_t)i + 1);
    }
    /* 2 + 2 + 1 */
    assert_int_equal(counter(f, "popcast_controller_commit_commands_total"), 3);
    assert_int_equal(counter(f, "popcast_controller_commit_changes_total"), 5);

    /* Rollbacks carry bundles too (read from the store): three of them,
     * to three tenants, go 2 + 1. */
    const char *tenants[] = {"r1", "r2", "r3"};
    for (int i = 0; i < 3; i++)
        assert_int_equal(deploy(f, tenants[i], "r"), 1);
    uint64_t commands = counter(f, "popcast_controller_commit_commands_total");
    outcome *rb[3];
    for (int i = 0; i < 3; i++)
        rb[i] = submit_to(f, f->extra, rollback_change(tenants[i], 1));
    if (!run_until_int(f, &rb[2]->calls))
        fail_msg("the last rollback was not answered");
    for (int i = 0; i < 3; i++) {
        expect_rc(&rb[i]->r, PC_OK);
        assert_int_equal(rb[i]->r.version, 2);
    }
    assert_int_equal(counter(f, "popcast_controller_commit_commands_total"), commands + 2);
}

static void test_max_pending(void **state)
{
    fixture *f = *state;
    pc_err err;
    pc_pipeline_options popt = {.max_pending = 2, .batch_max_changes = 1};
    assert_int_equal(
        pc_pipeline_new(&f->extra, &f->loop, f->store, f->signer, f->cluster, &popt, &err), PC_OK);
    pc_pipeline *p = f->extra;
    size_t len = 0;
    uint8_t *archive = lua_bundle("return function() return 'x' end\n", &len);
    outcome *o1 = submit_to(f, p, deploy_change("acme", archive, len));
    outcome *o2 = submit_to(f, p, deploy_change("acme", archive, len));

    pc_change *third = deploy_change("acme", archive, len);
    outcome *o3 = slot(f, third);
    assert_int_equal(pc_pipeline_submit(p, third, &err), PC_E_UNAVAILABLE);
    assert_int_equal(err.code, PC_E_UNAVAILABLE);
    assert_non_null(strstr(err.msg, "queued"));
    /* Still the caller's, untouched: it can be read and freed. */
    assert_int_equal(third->kind, PC_CHANGE_DEPLOY);
    assert_int_equal(third->u.deploy.bundle_len, len);
    assert_memory_equal(third->u.deploy.bundle, archive, len);
    pc_change_free(third);
    assert_int_equal(o3->calls, 0);
    assert_int_equal(o1->calls + o2->calls, 0);

    pc_pipeline_shutdown(p);
    assert_int_equal(o1->calls, 1);
    assert_int_equal(o2->calls, 1);
    expect_rc(&o1->r, PC_E_UNAVAILABLE);
    expect_rc(&o2->r, PC_E_UNAVAILABLE);
    pc_pipeline_close(p);
    f->extra = NULL;
    /* The wake-up sent by the submits finds nothing; the handle closes. */
    for (int i = 0; i < 10; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(o1->calls, 1);
    assert_int_equal(o2->calls, 1);
    assert_int_equal(applied_seq(f), 0);
    expect_no_tenant(f, "acme");
    free(archive);
}

/* Shutdown answers every queued change once, commits none of them, and
 * refuses later submissions. */
static void test_shutdown_fails_queued(void **state)
{
    fixture *f = *state;
    size_t len = 0;
    uint8_t *archive = lua_bundle("return function() return 'x' end\n", &len);
    outcome *o[4];
    o[0] = submit_to(f, f->pipeline, deploy_change("acme", archive, len));
    o[1] = submit_to(f, f->pipeline, token_create("pct_shutdown-token-secret", "t", "acme"));
    o[2] = submit_to(f, f->pipeline, pc_change_new(PC_CHANGE_DELETE, "acme"));
    o[3] = submit_to(f, f->pipeline, rotate_to(&next_key.pub));

    pc_pipeline_shutdown(f->pipeline);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(o[i]->calls, 1);
        expect_rc(&o[i]->r, PC_E_UNAVAILABLE);
        assert_non_null(strstr(o[i]->r.err.msg, "shutting down"));
    }
    assert_int_equal(o[0]->kind, PC_CHANGE_DEPLOY);
    assert_int_equal(o[3]->kind, PC_CHANGE_KEY_ROTATE);

    pc_change *late = deploy_change("acme", archive, len);
    pc_err err;
    assert_int_equal(pc_pipeline_submit(f->pipeline, late, &err), PC_E_UNAVAILABLE);
    assert_non_null(strstr(err.msg, "shutting down"));
    pc_change_free(late);

    /* Running the loop now answers nothing again and commits nothing. */
    for (int i = 0; i < 10; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    for (int i = 0; i < 4; i++)
        assert_int_equal(o[i]->calls, 1);
    assert_int_equal(applied_seq(f), 0);
    expect_no_tenant(f, "acme");
    free(archive);
    /* teardown closes the pipeline (a second shutdown) and checks that
     * nothing was answered twice. */
}

/* Shutdown answers the change in flight at once (it may still commit);
 * raft's own answer later only frees it. */
static void test_shutdown_answers_inflight(void **state)
{
    fixture *f = *state;
    size_t len = 0;
    uint8_t *archive = lua_bundle("return function() return 'x' end\n", &len);
    outcome *o = submit_to(f, f->pipeline, deploy_change("acme", archive, len));
    /* One iteration runs the pipeline's wake-up, which proposes the
     * change; raft commits it only after its log write completes, which
     * a later iteration hears of. */
    uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(o->calls, 0);

    pc_pipeline_shutdown(f->pipeline);
    assert_int_equal(o->calls, 1);
    expect_rc(&o->r, PC_E_OUTCOME_UNKNOWN);
    assert_non_null(strstr(o->r.err.msg, "may or may not be committed"));

    /* The cluster still runs: the change commits, and is not answered
     * again. */
    for (int i = 0; i < MAX_ITERATIONS && applied_seq(f) == 0; i++)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(applied_seq(f), 1);
    assert_int_equal(tenant_state(f, "acme").active_version, 1);
    for (int i = 0; i < 10; i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(o->calls, 1);
    free(archive);
}

static int group_setup(void **state)
{
    (void)state;
    pc_test_init();
    if (pc_keygen(&root) != PC_OK || pc_keygen(&next_key) != PC_OK || pc_keygen(&stranger) != PC_OK)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    pc_signing_key_wipe(&root);
    pc_signing_key_wipe(&next_key);
    pc_signing_key_wipe(&stranger);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kind_table),
        cmocka_unit_test_setup_teardown(test_deploy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rollback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_targets_and_stages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_agents, setup, teardown),
        cmocka_unit_test_setup_teardown(test_agent_first_use, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_kind, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit_off, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idempotency_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_fails_queued, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_answers_inflight, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
