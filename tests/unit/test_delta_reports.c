/* test_delta_reports.c - delta status reports end to end, without
 * sockets: the agent's report book (agent/report_book.h) packs what a
 * controller's fleet view (controller/rollout.h) merges.
 *
 * The invariant under test: after any sequence of reports, lost acks and
 * controller restarts, every report a controller accepts leaves it holding
 * exactly the agent's whole table (the controller checks the agent's
 * digest on every merge, so an accepted delta proves it), and a report
 * whose base it lacks changes nothing and asks for the whole table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "applier.h"
#include "report_book.h"
#include "rollout.h"

#define NOW 1000000

/* The agent's side of the test: each tenant's live version and whether
 * its latest version was refused. */
typedef struct agent_view {
    size_t n;
    uint64_t live[4096];
    uint64_t nacked[4096]; /* the version refused (0: none) */
    int present[4096];
    uint64_t counter;
} agent_view;

static char *dup(const char *s)
{
    char *d = strdup(s);
    assert_non_null(d);
    return d;
}

static void tenant_name(char *out, size_t cap, size_t i)
{
    snprintf(out, cap, "t%05zu", i);
}

/* A whole status as pc_applier_status builds it (every part malloc'd). */
static Popcast__AgentStatus *whole_of(agent_view *v)
{
    Popcast__AgentStatus *st = calloc(1, sizeof(*st));
    assert_non_null(st);
    popcast__agent_status__init(st);
    st->agent_id = dup("edge-1");
    st->pop = dup("fra");
    st->counter = ++v->counter;
    st->tenants = calloc(v->n + 1, sizeof(*st->tenants));
    st->nacks = calloc(v->n + 1, sizeof(*st->nacks));
    assert_non_null(st->tenants);
    assert_non_null(st->nacks);
    for (size_t i = 0; i < v->n; i++) {
        if (!v->present[i])
            continue;
        char name[32];
        tenant_name(name, sizeof(name), i);
        Popcast__TenantStatus *t = calloc(1, sizeof(*t));
        assert_non_null(t);
        popcast__tenant_status__init(t);
        t->tenant = dup(name);
        t->live_version = v->live[i];
        t->applied_version = v->nacked[i] > v->live[i] ? v->nacked[i] : v->live[i];
        t->applied_seq = t->applied_version;
        st->tenants[st->n_tenants++] = t;
        if (v->nacked[i] != 0) {
            Popcast__Nack *nk = calloc(1, sizeof(*nk));
            assert_non_null(nk);
            popcast__nack__init(nk);
            nk->tenant = dup(name);
            nk->version = v->nacked[i];
            nk->seq = v->nacked[i];
            nk->reason = dup("runtime_error");
            nk->detail = dup("boom");
            st->nacks[st->n_nacks++] = nk;
        }
    }
    st->applied_seq = st->counter;
    return st;
}

typedef struct delivered {
    int rc;
    bool delta, takes_deltas;
    size_t len, n_tenants;
} delivered;

/* Packs the book's latest report on base, and hands it to the controller
 * as the sync server would (decoded from the wire). tamper: flips a byte
 * of the digest. */
static delivered deliver(pc_report_book *b, pc_rollout *r, uint64_t base, bool tamper)
{
    delivered d = {0};
    uint8_t *buf = NULL;
    assert_int_equal(pc_report_book_pack(b, base, NULL, &buf, &d.len, &d.delta), PC_OK);
    Popcast__SyncCall *call = popcast__sync_call__unpack(NULL, d.len, buf);
    free(buf);
    assert_non_null(call);
    assert_int_equal(call->body_case, POPCAST__SYNC_CALL__BODY_STATUS);
    Popcast__AgentStatus *st = call->status;
    assert_int_equal(st->delta, d.delta);
    d.n_tenants = st->n_tenants;
    if (tamper && st->tenants_digest.len > 0)
        st->tenants_digest.data[0] ^= 1;
    pc_err err;
    d.rc = pc_rollout_report(r, st, true, NOW, &d.takes_deltas, &err);
    popcast__sync_call__free_unpacked(call, NULL);
    return d;
}

static uint64_t served(pc_rollout *r, size_t i)
{
    char name[32];
    tenant_name(name, sizeof(name), i);
    json_t *j = pc_rollout_serving_json(r, name, NOW);
    assert_non_null(j);
    json_t *first = json_array_get(json_object_get(j, "versions"), 0);
    uint64_t v = first ? (uint64_t)json_integer_value(json_object_get(first, "version")) : 0;
    json_decref(j);
    return v;
}

static size_t nacked_agents(pc_rollout *r, size_t i, uint64_t version)
{
    char name[32];
    tenant_name(name, sizeof(name), i);
    pc_rollout_query q = {.tenant = name, .version = version, .seq = version, .fraction = 1.0};
    pc_rollout_summary sum;
    json_t *j = pc_rollout_version_json(r, &q, NOW, &sum);
    assert_non_null(j);
    json_decref(j);
    return sum.nacked;
}

static size_t fleet_tenants(pc_rollout *r)
{
    json_t *f = pc_rollout_fleet_json(r, 0, NOW);
    json_t *a = json_array_get(json_object_get(f, "agents"), 0);
    size_t n = a ? (size_t)json_integer_value(json_object_get(a, "tenants")) : 0;
    json_decref(f);
    return n;
}

static agent_view *view_of(size_t n)
{
    agent_view *v = calloc(1, sizeof(*v));
    assert_non_null(v);
    v->n = n;
    for (size_t i = 0; i < n; i++) {
        v->live[i] = 1;
        v->present[i] = 1;
    }
    return v;
}

static pc_rollout *fleet(void)
{
    pc_rollout *r = pc_rollout_new(&(pc_rollout_options){0});
    assert_non_null(r);
    return r;
}

/* An agent with n tenants whose whole table the controller holds; the
 * generation it acknowledged. */
typedef struct setup {
    agent_view *v;
    pc_report_book *b;
    pc_rollout *r;
    uint64_t base;
} setup;

static setup held(size_t n)
{
    setup x = {view_of(n), pc_report_book_new(), fleet(), 0};
    assert_non_null(x.b);
    assert_int_equal(pc_report_book_update(x.b, whole_of(x.v)), PC_OK);
    delivered d = deliver(x.b, x.r, 0, false);
    assert_int_equal(d.rc, PC_OK);
    assert_true(d.takes_deltas);
    x.base = pc_report_book_counter(x.b);
    return x;
}

/* The agent's next generation, as it stands. */
static void next_generation(setup *x)
{
    assert_int_equal(pc_report_book_update(x->b, whole_of(x->v)), PC_OK);
}

static void done(setup *x)
{
    pc_rollout_free(x->r);
    pc_report_book_free(x->b);
    free(x->v);
}

/* A change to 3 of 2,000 tenants travels as those 3, and the controller's
 * view moves for them and only them. */
static void test_delta_carries_only_what_changed(void **state)
{
    (void)state;
    agent_view *v = view_of(2000);
    pc_report_book *b = pc_report_book_new();
    pc_rollout *r = fleet();
    assert_int_equal(pc_report_book_update(b, whole_of(v)), PC_OK);
    delivered whole = deliver(b, r, 0, false);
    assert_int_equal(whole.rc, PC_OK);
    assert_false(whole.delta);
    assert_int_equal(whole.n_tenants, 2000);
    assert_true(whole.takes_deltas);
    setup x = {v, b, r, pc_report_book_counter(b)};

    v->live[7] = 2;
    v->live[1500] = 5;
    v->nacked[42] = 2;
    next_generation(&x);
    delivered d = deliver(b, r, x.base, false);
    assert_int_equal(d.rc, PC_OK);
    assert_true(d.delta);
    assert_int_equal(d.n_tenants, 3);
    assert_true(d.takes_deltas);
    assert_true(d.len * 100 < whole.len);
    print_message("whole report %zu bytes, delta of 3 tenants %zu bytes\n", whole.len, d.len);

    assert_int_equal(served(r, 7), 2);
    assert_int_equal(served(r, 1500), 5);
    assert_int_equal(served(r, 8), 1);
    assert_int_equal(nacked_agents(r, 42, 2), 1);
    assert_int_equal(fleet_tenants(r), 2000);
    done(&x);
}

/* An unchanged table travels as an empty delta. */
static void test_nothing_changed_is_an_empty_delta(void **state)
{
    (void)state;
    setup x = held(100);
    next_generation(&x);
    delivered d = deliver(x.b, x.r, x.base, false);
    assert_int_equal(d.rc, PC_OK);
    assert_true(d.delta);
    assert_int_equal(d.n_tenants, 0);
    assert_int_equal(fleet_tenants(x.r), 100);
    done(&x);
}

/* A header-only status (pc_applier_status_header) for the agent's next
 * generation, its tenant part unchanged. */
static Popcast__AgentStatus *header_of(agent_view *v)
{
    Popcast__AgentStatus *st = calloc(1, sizeof(*st));
    assert_non_null(st);
    popcast__agent_status__init(st);
    st->agent_id = dup("edge-1");
    st->pop = dup("fra");
    st->counter = ++v->counter;
    st->applied_seq = st->counter;
    return st;
}

/* A renewed generation carries the tenants, nacks and digest of the one
 * before it under its own counter: a whole report of it is the whole
 * table, a delta on the earlier one is empty, and a delta on an older
 * base still lists what changed since that base. */
static void test_renew_keeps_the_tenant_part(void **state)
{
    (void)state;
    setup x = held(40);
    uint64_t first = x.base;
    x.v->live[9] = 4;
    x.v->nacked[10] = 2;
    next_generation(&x);
    uint64_t second = pc_report_book_counter(x.b);
    assert_int_equal(pc_report_book_renew(x.b, header_of(x.v)), PC_OK);
    uint64_t third = pc_report_book_counter(x.b);
    assert_true(third > second);

    delivered d = deliver(x.b, x.r, first, false);
    assert_int_equal(d.rc, PC_OK);
    assert_true(d.delta);
    assert_int_equal(d.n_tenants, 2);
    assert_int_equal(served(x.r, 9), 4);
    assert_int_equal(nacked_agents(x.r, 10, 2), 1);
    /* Renewed again: nothing changed since the generation it holds. */
    assert_int_equal(pc_report_book_renew(x.b, header_of(x.v)), PC_OK);
    d = deliver(x.b, x.r, third, false);
    assert_int_equal(d.rc, PC_OK);
    assert_true(d.delta);
    assert_int_equal(d.n_tenants, 0);
    third = pc_report_book_counter(x.b);

    /* A fresh controller gets the whole table from the renewed one. */
    pc_rollout_free(x.r);
    x.r = fleet();
    d = deliver(x.b, x.r, 0, false);
    assert_int_equal(d.rc, PC_OK);
    assert_false(d.delta);
    assert_int_equal(d.n_tenants, 40);
    assert_int_equal(fleet_tenants(x.r), 40);
    assert_int_equal(served(x.r, 9), 4);
    assert_int_equal(nacked_agents(x.r, 10, 2), 1);

    /* A change after the renewal is a delta on it as on any generation. */
    x.v->live[3] = 6;
    next_generation(&x);
    d = deliver(x.b, x.r, third, false);
    assert_int_equal(d.rc, PC_OK);
    assert_int_equal(d.n_tenants, 1);
    assert_int_equal(served(x.r, 3), 6);
    done(&x);
}

/* Nothing to renew from (no generation yet), or a header that carries
 * tenants: refused, and the book is as it was. */
static void test_renew_refuses_without_a_tenant_part(void **state)
{
    (void)state;
    agent_view *v = view_of(5);
    pc_report_book *b = pc_report_book_new();
    assert_non_null(b);
    Popcast__AgentStatus *h = header_of(v);
    assert_int_equal(pc_report_book_renew(b, h), PC_E_NOTFOUND);
    assert_int_equal(pc_report_book_counter(b), 0);
    free(h->agent_id); /* not taken: still ours */
    free(h->pop);
    free(h);
    assert_int_equal(pc_report_book_update(b, h = whole_of(v)), PC_OK);
    Popcast__AgentStatus *not_header = whole_of(v);
    assert_int_equal(pc_report_book_renew(b, not_header), PC_E_NOTFOUND);
    assert_int_equal(pc_report_book_counter(b), h->counter);
    free(not_header->agent_id);
    free(not_header->pop);
    not_header->agent_id = not_header->pop = NULL;
    pc_applier_status_clear(not_header);
    free(not_header);
    pc_report_book_free(b);
    free(v);
}

/* A controller that never held the agent's table (it restarted) refuses
 * a delta with PC_E_BASE_UNKNOWN and shows nothing; the whole table then
 * goes in. */
static void test_delta_to_a_restarted_controller_asks_for_whole(void **state)
{
    (void)state;
    setup x = held(50);
    pc_rollout_free(x.r);
    x.r = fleet(); /* the restart */
    x.v->live[3] = 9;
    next_generation(&x);
    delivered d = deliver(x.b, x.r, x.base, false);
    assert_int_equal(d.rc, PC_E_BASE_UNKNOWN);
    assert_false(d.takes_deltas);
    assert_int_equal(fleet_tenants(x.r), 0);
    assert_int_equal(served(x.r, 3), 0);
    /* The agent hears "resend whole": its next report is whole. */
    next_generation(&x);
    d = deliver(x.b, x.r, 0, false);
    assert_int_equal(d.rc, PC_OK);
    assert_true(d.takes_deltas);
    assert_int_equal(served(x.r, 3), 9);
    assert_int_equal(fleet_tenants(x.r), 50);
    done(&x);
}

/* A delta whose digest does not match the merged table (drift, or a bug
 * in either side) is refused and changes nothing. */
static void test_digest_mismatch_changes_nothing(void **state)
{
    (void)state;
    setup x = held(50);
    x.v->live[3] = 9;
    next_generation(&x);
    delivered d = deliver(x.b, x.r, x.base, true);
    assert_int_equal(d.rc, PC_E_BASE_UNKNOWN);
    assert_int_equal(served(x.r, 3), 1);
    /* The same delta, untampered, is taken: nothing was half applied. */
    d = deliver(x.b, x.r, x.base, false);
    assert_int_equal(d.rc, PC_OK);
    assert_int_equal(served(x.r, 3), 9);
    done(&x);
}

/* A delta on a base older than what the controller holds (the ack of a
 * later report was lost) is a superset of what changed since: taken. A
 * base newer than what it holds is not. */
static void test_lost_ack_and_future_base(void **state)
{
    (void)state;
    setup x = held(50);
    x.v->live[1] = 2;
    next_generation(&x);
    assert_int_equal(deliver(x.b, x.r, x.base, false).rc, PC_OK); /* its ack is lost */
    x.v->live[2] = 3;
    next_generation(&x);
    delivered d = deliver(x.b, x.r, x.base, false);
    assert_int_equal(d.rc, PC_OK);
    assert_int_equal(d.n_tenants, 2);
    assert_int_equal(served(x.r, 1), 2);
    assert_int_equal(served(x.r, 2), 3);

    /* Based on a generation this controller never got. */
    x.v->live[4] = 4;
    next_generation(&x);
    uint64_t never_sent = pc_report_book_counter(x.b);
    x.v->live[5] = 4;
    next_generation(&x);
    d = deliver(x.b, x.r, never_sent, false);
    assert_int_equal(d.rc, PC_E_BASE_UNKNOWN);
    assert_int_equal(served(x.r, 4), 1);
    assert_int_equal(served(x.r, 5), 1);
    done(&x);
}

/* A tenant leaving the table cannot be said in a delta: the book sends
 * the whole table instead, whatever the base. */
static void test_tenant_leaving_voids_bases(void **state)
{
    (void)state;
    setup x = held(20);
    x.v->present[11] = 0;
    next_generation(&x);
    delivered d = deliver(x.b, x.r, x.base, false);
    assert_int_equal(d.rc, PC_OK);
    assert_false(d.delta);
    assert_int_equal(fleet_tenants(x.r), 19);
    assert_int_equal(served(x.r, 11), 0);
    /* Later bases work again. */
    uint64_t base = pc_report_book_counter(x.b);
    x.v->live[2] = 7;
    next_generation(&x);
    d = deliver(x.b, x.r, base, false);
    assert_true(d.delta);
    assert_int_equal(d.rc, PC_OK);
    assert_int_equal(served(x.r, 2), 7);
    done(&x);
}

/* Nacks of tenants a delta does not list stay as they were; those of the
 * tenants it lists are replaced by what it says. */
static void test_nacks_merge_per_tenant(void **state)
{
    (void)state;
    setup x = held(30);
    x.v->nacked[4] = 2;
    x.v->nacked[5] = 2;
    next_generation(&x);
    assert_int_equal(deliver(x.b, x.r, x.base, false).rc, PC_OK);
    uint64_t base = pc_report_book_counter(x.b);
    x.v->nacked[5] = 0;
    x.v->live[5] = 3; /* version 3 fixed it */
    x.v->live[6] = 2;
    next_generation(&x);
    delivered d = deliver(x.b, x.r, base, false);
    assert_int_equal(d.rc, PC_OK);
    assert_int_equal(d.n_tenants, 2);
    assert_int_equal(nacked_agents(x.r, 4, 2), 1);
    assert_int_equal(nacked_agents(x.r, 5, 2), 0);
    assert_int_equal(served(x.r, 5), 3);
    done(&x);
}

/* A delta that lists a tenant twice is malformed. */
static void test_duplicate_tenant_is_invalid(void **state)
{
    (void)state;
    pc_rollout *r = fleet();
    Popcast__TenantStatus t1 = POPCAST__TENANT_STATUS__INIT, t2 = POPCAST__TENANT_STATUS__INIT;
    t1.tenant = "same";
    t2.tenant = "same";
    Popcast__TenantStatus *ts[] = {&t1, &t2};
    Popcast__AgentStatus st = POPCAST__AGENT_STATUS__INIT;
    st.agent_id = "edge-1";
    st.pop = "fra";
    st.counter = 5;
    st.tenants = ts;
    st.n_tenants = 2;
    pc_err err;
    assert_int_equal(pc_rollout_report(r, &st, true, NOW, NULL, &err), PC_E_INVALID);
    assert_int_equal(fleet_tenants(r), 0);
    pc_rollout_free(r);
}

/* A whole report without a digest (an older agent) is taken, but the
 * controller does not offer deltas on it. */
static void test_whole_without_digest_takes_no_deltas(void **state)
{
    (void)state;
    pc_rollout *r = fleet();
    Popcast__TenantStatus t1 = POPCAST__TENANT_STATUS__INIT;
    t1.tenant = "alpha";
    t1.live_version = 1;
    Popcast__TenantStatus *ts[] = {&t1};
    Popcast__AgentStatus st = POPCAST__AGENT_STATUS__INIT;
    st.agent_id = "edge-1";
    st.pop = "fra";
    st.counter = 5;
    st.tenants = ts;
    st.n_tenants = 1;
    pc_err err;
    bool takes = true;
    assert_int_equal(pc_rollout_report(r, &st, true, NOW, &takes, &err), PC_OK);
    assert_false(takes);
    /* And a delta on it is refused as having no base. */
    st.counter = 6;
    st.delta = true;
    st.base_counter = 5;
    st.n_tenants = 0;
    assert_int_equal(pc_rollout_report(r, &st, true, NOW, &takes, &err), PC_E_BASE_UNKNOWN);
    pc_rollout_free(r);
}

/* Fixed seed: 400 generations of random changes (live versions, nacks
 * coming and going, tenants appearing), each delivered with a random fate
 * (taken and acked, taken with its ack lost, lost on the way, or the
 * controller restarted). Every report the controller accepts must pass
 * its digest check, and at the end its view equals the agent's. */
static void test_random_histories_converge(void **state)
{
    (void)state;
    agent_view *v = view_of(300);
    for (size_t i = 200; i < 300; i++)
        v->present[i] = 0; /* appear later */
    srand(12345);
    pc_report_book *b = pc_report_book_new();
    pc_rollout *r = fleet();
    uint64_t acked = 0;
    bool takes = false, restarted = false;
    size_t deltas = 0, wholes = 0, resends = 0;
    for (int gen = 0; gen < 400; gen++) {
        int changes = rand() % 6;
        for (int k = 0; k < changes; k++) {
            size_t i = (size_t)rand() % v->n;
            switch (rand() % 4) {
            case 0:
                /* A newer version live settles an older refusal. */
                if (++v->live[i] >= v->nacked[i])
                    v->nacked[i] = 0;
                break;
            case 1: v->nacked[i] = v->live[i] + 1; break;
            case 2: v->nacked[i] = 0; break;
            default: v->present[i] = 1; break;
            }
        }
        assert_int_equal(pc_report_book_update(b, whole_of(v)), PC_OK);
        int fate = rand() % 10;
        if (fate == 0)
            continue; /* lost on the way */
        if (fate == 1) {
            pc_rollout_free(r);
            r = fleet();
            restarted = true;
        }
        delivered d = deliver(b, r, takes ? acked : 0, false);
        if (d.rc == PC_E_BASE_UNKNOWN) {
            /* Only a controller that lost the table may ask: anything
             * else is a delta that missed a change (its digest failed). */
            assert_true(restarted);
            resends++;
            takes = false;
            acked = 0;
            continue;
        }
        assert_int_equal(d.rc, PC_OK);
        d.delta ? deltas++ : wholes++;
        if (!d.delta)
            restarted = false;
        if (fate == 2)
            continue; /* ack lost */
        takes = d.takes_deltas;
        acked = takes ? pc_report_book_counter(b) : 0;
    }
    /* A last report, then the views must agree tenant by tenant. */
    assert_int_equal(pc_report_book_update(b, whole_of(v)), PC_OK);
    delivered d = deliver(b, r, takes ? acked : 0, false);
    if (d.rc == PC_E_BASE_UNKNOWN)
        d = deliver(b, r, 0, false);
    assert_int_equal(d.rc, PC_OK);
    size_t present = 0;
    for (size_t i = 0; i < v->n; i++) {
        present += (size_t)v->present[i];
        assert_int_equal(served(r, i), v->present[i] ? v->live[i] : 0);
        if (v->present[i] && v->nacked[i] != 0)
            assert_int_equal(nacked_agents(r, i, v->nacked[i]), 1);
    }
    assert_int_equal(fleet_tenants(r), present);
    print_message("%zu deltas, %zu whole, %zu resends asked\n", deltas, wholes, resends);
    assert_true(deltas > 100);
    assert_true(resends > 0);
    pc_rollout_free(r);
    pc_report_book_free(b);
    free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delta_carries_only_what_changed),
        cmocka_unit_test(test_nothing_changed_is_an_empty_delta),
        cmocka_unit_test(test_renew_keeps_the_tenant_part),
        cmocka_unit_test(test_renew_refuses_without_a_tenant_part),
        cmocka_unit_test(test_delta_to_a_restarted_controller_asks_for_whole),
        cmocka_unit_test(test_digest_mismatch_changes_nothing),
        cmocka_unit_test(test_lost_ack_and_future_base),
        cmocka_unit_test(test_tenant_leaving_voids_bases),
        cmocka_unit_test(test_nacks_merge_per_tenant),
        cmocka_unit_test(test_duplicate_tenant_is_invalid),
        cmocka_unit_test(test_whole_without_digest_takes_no_deltas),
        cmocka_unit_test(test_random_histories_converge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
