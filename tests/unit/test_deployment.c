/* test_deployment.c - a staged deployment's record (controller/
 * deployment.h): which operations apply in which state, what each makes
 * of the record, and the invariants every replica checks: events only
 * appended, what was asked for never changed, the stage only forward, a
 * final state never left. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "deployment.h"
#include "harness.h"
#include "target.h"

/* A new record of version 5 (baseline 4) with the default plan, canary
 * "ams": four stages. */
static Popcast__DeploymentRecord *new_record(void)
{
    Popcast__DeploymentRecord *d = malloc(sizeof(*d));
    assert_non_null(d);
    popcast__deployment_record__init(d);
    d->tenant = strdup("web");
    d->author = strdup("admin");
    d->id = 1;
    d->version = 5;
    d->baseline = 4;
    d->state = POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_RUNNING;
    d->created_unix_ms = 1000;
    assert_int_equal(pc_deployment_default_plan(d, "ams", 60000), PC_OK);
    assert_int_equal(pc_deployment_add_event(d, 1000, "started", 0, 0, "by admin"), PC_OK);
    assert_int_equal(pc_deployment_check_new(d, NULL), PC_OK);
    return d;
}

/* Applies op to *d, checks the update as a replica would, and replaces
 * *d with the result; returns the apply's code (nothing changes on an
 * error). */
static int step(Popcast__DeploymentRecord **d, pc_deployment_op_kind kind, uint32_t stage,
                uint64_t seq)
{
    pc_deployment_op op = {.kind = kind, .stage = stage, .seq = seq};
    Popcast__DeploymentRecord *next = NULL;
    pc_err err;
    int rc = pc_deployment_apply(*d, &op, 2000, "token:abc", &next, &err);
    if (rc != PC_OK)
        return rc;
    assert_int_equal(pc_deployment_check_update(*d, next, &err), PC_OK);
    popcast__deployment_record__free_unpacked(*d, NULL);
    *d = next;
    return PC_OK;
}

static const char *last_event(const Popcast__DeploymentRecord *d)
{
    return d->n_events ? d->events[d->n_events - 1]->what : "";
}

static void test_default_plan(void **state)
{
    Popcast__DeploymentRecord *d = new_record();
    assert_int_equal(d->n_plan, 4);
    assert_string_equal(d->plan[0]->target->pops[0], "ams");
    assert_int_equal(d->plan[1]->target->permille, 100);
    assert_int_equal(d->plan[2]->target->permille, 500);
    assert_null(d->plan[3]->target);
    for (size_t i = 0; i < 3; i++) {
        assert_true(d->plan[i]->gate);
        assert_int_equal(d->plan[i]->bake_ms, 60000);
    }
    popcast__deployment_record__free_unpacked(d, NULL);
    /* No canary PoP known: the plan starts at 10 %. */
    Popcast__DeploymentRecord bare = POPCAST__DEPLOYMENT_RECORD__INIT;
    assert_int_equal(pc_deployment_default_plan(&bare, NULL, 1), PC_OK);
    assert_int_equal(bare.n_plan, 3);
    assert_int_equal(bare.plan[0]->target->n_pops, 0);
    for (size_t i = 0; i < bare.n_plan; i++)
        popcast__deployment_stage__free_unpacked(bare.plan[i], NULL);
    free(bare.plan);
}

/* Staged, passed, ... complete: each operation only in its place. */
static void test_a_deployment_life(void **state)
{
    Popcast__DeploymentRecord *d = new_record();
    /* Nothing can pass or fail before its stage started. */
    assert_int_equal(step(&d, PC_DEPLOYMENT_PASSED, 0, 0), PC_E_EXISTS);
    assert_int_equal(step(&d, PC_DEPLOYMENT_PROMOTE, 0, 0), PC_E_EXISTS);
    assert_int_equal(step(&d, PC_DEPLOYMENT_STAGED, 0, 10), PC_OK);
    assert_int_equal(d->stage_seq, 10);
    assert_int_equal(d->stage_started_unix_ms, 2000);
    /* Staged twice, or a stage that is not the current one: refused. */
    assert_int_equal(step(&d, PC_DEPLOYMENT_STAGED, 0, 11), PC_E_EXISTS);
    assert_int_equal(step(&d, PC_DEPLOYMENT_PASSED, 1, 0), PC_E_EXISTS);
    assert_int_equal(step(&d, PC_DEPLOYMENT_PASSED, 0, 0), PC_OK);
    assert_int_equal(d->stage, 1);
    assert_int_equal(d->stage_seq, 0);
    assert_int_equal(step(&d, PC_DEPLOYMENT_STAGED, 1, 12), PC_OK);
    assert_int_equal(step(&d, PC_DEPLOYMENT_PAUSE, 0, 0), PC_OK);
    assert_int_equal(step(&d, PC_DEPLOYMENT_PAUSE, 0, 0), PC_E_EXISTS);
    /* A paused deployment is not judged, but can be promoted by hand. */
    assert_int_equal(step(&d, PC_DEPLOYMENT_PASSED, 1, 0), PC_E_EXISTS);
    assert_int_equal(step(&d, PC_DEPLOYMENT_PROMOTE, 0, 0), PC_OK);
    assert_int_equal(d->stage, 2);
    assert_string_equal(d->events[d->n_events - 1]->detail, "by token:abc");
    assert_int_equal(step(&d, PC_DEPLOYMENT_RESUME, 0, 0), PC_OK);
    assert_int_equal(step(&d, PC_DEPLOYMENT_STAGED, 2, 13), PC_OK);
    assert_int_equal(step(&d, PC_DEPLOYMENT_PASSED, 2, 0), PC_OK);
    assert_int_equal(step(&d, PC_DEPLOYMENT_STAGED, 3, 14), PC_OK);
    assert_int_equal(step(&d, PC_DEPLOYMENT_PASSED, 3, 0), PC_OK);
    assert_int_equal(d->state, POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_COMPLETE);
    assert_string_equal(last_event(d), "complete");
    assert_true(pc_deployment_final(d));
    /* Final: nothing applies any more. */
    for (int k = 0; k < PC_DEPLOYMENT_OP_COUNT; k++)
        assert_int_equal(step(&d, (pc_deployment_op_kind)k, 3, 15), PC_E_EXISTS);
    popcast__deployment_record__free_unpacked(d, NULL);
}

/* A failed gate halts; the revert ends it reverted, or aborted when an
 * operator asked; with no baseline a halt is where it ends. */
static void test_halt_and_revert(void **state)
{
    Popcast__DeploymentRecord *d = new_record();
    assert_int_equal(step(&d, PC_DEPLOYMENT_STAGED, 0, 10), PC_OK);
    assert_int_equal(step(&d, PC_DEPLOYMENT_FAILED, 0, 0), PC_OK);
    assert_int_equal(d->state, POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_HALTED);
    assert_false(pc_deployment_final(d));
    assert_int_equal(step(&d, PC_DEPLOYMENT_RESUME, 0, 0), PC_E_EXISTS);
    assert_int_equal(step(&d, PC_DEPLOYMENT_REVERTED, 0, 20), PC_OK);
    assert_int_equal(d->state, POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_REVERTED);
    assert_int_equal(d->revert_seq, 20);
    popcast__deployment_record__free_unpacked(d, NULL);

    d = new_record();
    assert_int_equal(step(&d, PC_DEPLOYMENT_ABORT, 0, 0), PC_OK);
    assert_int_equal(step(&d, PC_DEPLOYMENT_REVERTED, 0, 21), PC_OK);
    assert_int_equal(d->state, POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_ABORTED);
    popcast__deployment_record__free_unpacked(d, NULL);

    d = new_record();
    d->baseline = 0;
    assert_int_equal(step(&d, PC_DEPLOYMENT_STAGED, 0, 10), PC_OK);
    assert_int_equal(step(&d, PC_DEPLOYMENT_FAILED, 0, 0), PC_OK);
    assert_true(pc_deployment_final(d));
    assert_int_equal(step(&d, PC_DEPLOYMENT_REVERTED, 0, 22), PC_E_EXISTS);
    popcast__deployment_record__free_unpacked(d, NULL);

    /* Superseded from anything not over, halted included. */
    d = new_record();
    assert_int_equal(step(&d, PC_DEPLOYMENT_ABORT, 0, 0), PC_OK);
    assert_int_equal(step(&d, PC_DEPLOYMENT_SUPERSEDED, 0, 0), PC_OK);
    assert_true(pc_deployment_final(d));
    popcast__deployment_record__free_unpacked(d, NULL);
}

/* What every replica refuses: a rewritten or dropped event, a changed
 * plan or version, a stage going back, a final record changed. */
static void test_update_invariants(void **state)
{
    Popcast__DeploymentRecord *d = new_record();
    assert_int_equal(step(&d, PC_DEPLOYMENT_STAGED, 0, 10), PC_OK);
    assert_int_equal(step(&d, PC_DEPLOYMENT_PASSED, 0, 0), PC_OK);
    pc_err err;
    Popcast__DeploymentRecord *bad = pc_deployment_copy(d);
    free(bad->events[0]->detail);
    bad->events[0]->detail = strdup("someone else");
    assert_int_equal(pc_deployment_check_update(d, bad, &err), PC_E_INVALID);
    popcast__deployment_record__free_unpacked(bad, NULL);

    bad = pc_deployment_copy(d);
    popcast__deployment_event__free_unpacked(bad->events[--bad->n_events], NULL);
    assert_int_equal(pc_deployment_check_update(d, bad, &err), PC_E_INVALID);
    popcast__deployment_record__free_unpacked(bad, NULL);

    bad = pc_deployment_copy(d);
    bad->stage = 0;
    assert_int_equal(pc_deployment_check_update(d, bad, &err), PC_E_INVALID);
    bad->stage = 4;
    assert_int_equal(pc_deployment_check_update(d, bad, &err), PC_E_INVALID);
    bad->stage = 1;
    bad->version = 6;
    assert_int_equal(pc_deployment_check_update(d, bad, &err), PC_E_INVALID);
    bad->version = 5;
    bad->plan[0]->bake_ms = 1;
    assert_int_equal(pc_deployment_check_update(d, bad, &err), PC_E_INVALID);
    bad->plan[0]->bake_ms = 60000;
    bad->baseline = 3;
    assert_int_equal(pc_deployment_check_update(d, bad, &err), PC_E_INVALID);
    bad->baseline = 4;
    assert_int_equal(pc_deployment_check_update(d, bad, &err), PC_OK);
    popcast__deployment_record__free_unpacked(bad, NULL);

    /* A final record never changes, even with events appended. */
    Popcast__DeploymentRecord *done = pc_deployment_copy(d);
    done->state = POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_COMPLETE;
    bad = pc_deployment_copy(done);
    assert_int_equal(pc_deployment_add_event(bad, 3000, "resumed", 1, 0, ""), PC_OK);
    bad->state = POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_RUNNING;
    assert_int_equal(pc_deployment_check_update(done, bad, &err), PC_E_INVALID);
    popcast__deployment_record__free_unpacked(bad, NULL);
    popcast__deployment_record__free_unpacked(done, NULL);
    popcast__deployment_record__free_unpacked(d, NULL);
}

/* A record being created: running, at its first stage, one event, a
 * plan of 1 to 8 valid stages, a baseline below its version. */
static void test_check_new(void **state)
{
    pc_err err;
    Popcast__DeploymentRecord *d = new_record();
    d->stage = 1;
    assert_int_equal(pc_deployment_check_new(d, &err), PC_E_INVALID);
    d->stage = 0;
    d->baseline = 5;
    assert_int_equal(pc_deployment_check_new(d, &err), PC_E_INVALID);
    d->baseline = 4;
    d->plan[1]->target->permille = 1001;
    assert_int_equal(pc_deployment_check_new(d, &err), PC_E_INVALID);
    d->plan[1]->target->permille = 100;
    d->state = POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_COMPLETE;
    assert_int_equal(pc_deployment_check_new(d, &err), PC_E_INVALID);
    d->state = POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_RUNNING;
    size_t n = d->n_plan;
    d->n_plan = 0;
    assert_int_equal(pc_deployment_check_new(d, &err), PC_E_INVALID);
    d->n_plan = n;
    assert_int_equal(pc_deployment_check_new(d, &err), PC_OK);
    json_t *j = pc_deployment_json(d);
    assert_string_equal(json_string_value(json_object_get(j, "state")), "running");
    assert_int_equal(json_integer_value(json_object_get(j, "stage")), 1);
    assert_int_equal(json_array_size(json_object_get(j, "plan")), 4);
    json_decref(j);
    popcast__deployment_record__free_unpacked(d, NULL);
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_plan),    cmocka_unit_test(test_a_deployment_life),
        cmocka_unit_test(test_halt_and_revert), cmocka_unit_test(test_update_invariants),
        cmocka_unit_test(test_check_new),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
