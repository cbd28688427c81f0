/* test_prevote.c - a restarted follower does not depose a healthy leader.
 *
 * A follower that comes back after a crash does not hear from the leader
 * at once: libraft's transport reconnects to a lost peer on a timer (every
 * second), and the follower's election timer may run out first. Without
 * raft pre-vote it then campaigns with a higher term; the leader, on its
 * next message to it, learns that term and steps down: an election, the
 * term moving by several, seconds of 503s, for nothing. With pre-vote the
 * follower first asks whether it could win; the others still hear from
 * their leader and say no, so no term moves and the leader stays.
 *
 * The restarted follower gets a short election timeout so that its timer
 * runs out before the leader reconnects to it in almost every attempt
 * (without pre-vote, each attempt then deposes the leader); the others
 * get a long one, so that a slow machine does not hold a real election
 * meanwhile. It is always the same follower: an impatient one left
 * running (50 ms, below the 100 ms heartbeat) would itself campaign on a
 * loaded machine while the other is restarting, and win the pre-vote of a
 * node that has not heard from the leader yet: a real election that says
 * nothing about pre-vote (seen under two busy loops). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

#define RESTARTS 3

static pc_test_env env;
static pc_test_cluster cl;

static json_t *cluster_view(int i)
{
    pc_http_result r;
    if (pc_test_api(&env, &cl.node[i], "GET", "/v1/cluster", NULL, NULL, 0, &r) != 200) {
        pc_http_result_free(&r);
        return NULL;
    }
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    return doc;
}

static int64_t view_int(json_t *view, const char *name)
{
    return (int64_t)json_integer_value(json_object_get(view, name));
}

static bool view_is(json_t *view, const char *role)
{
    const char *r = json_string_value(json_object_get(view, "role"));
    return r != NULL && strcmp(r, role) == 0;
}

/* Says what every node thinks, then fails. */
static void fail_with_views(const char *what)
{
    for (int i = 0; i < cl.n; i++) {
        json_t *v = cl.node[i].proc != NULL ? cluster_view(i) : NULL;
        char *text = v != NULL ? json_dumps(v, JSON_COMPACT) : NULL;
        fprintf(stderr, "node %d: %s\n", i + 1, text != NULL ? text : "(no answer)");
        free(text);
        json_decref(v);
        if (cl.node[i].proc != NULL)
            pc_proc_dump_log(cl.node[i].proc);
    }
    fail_msg("%s", what);
}

/* Polls until node i knows a leader (itself, after deposing the old one)
 * and has applied at least index. */
static void wait_follower_applied(int i, int64_t index)
{
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (;;) {
        json_t *v = cluster_view(i);
        bool done =
            v != NULL && view_int(v, "leader_id") != 0 && view_int(v, "last_applied") >= index;
        if (!done && pc_test_now_ms() > deadline) {
            char *text = v != NULL ? json_dumps(v, JSON_COMPACT) : NULL;
            char what[2048];
            snprintf(what, sizeof(what), "node %d did not apply index %lld: %s", i + 1,
                     (long long)index, text != NULL ? text : "(no answer)");
            free(text);
            json_decref(v);
            fail_with_views(what);
        }
        json_decref(v);
        if (done)
            return;
        pc_test_sleep_ms(50);
    }
}

static void test_restarted_follower_keeps_the_leader(void **state)
{
    (void)state;
    pc_test_env_init(&env);
    const char *steady[] = {"--raft-election-ms", "3000", NULL};
    pc_test_cluster_init(&env, &cl, 3, 3, steady);
    int leader = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
    assert_true(leader >= 0);
    /* One committed write, then the term and leader every node agrees on. */
    const char *src = "return function(req) return 'x' end";
    pc_test_deployed d;
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (pc_test_try_deploy(&env, &cl.node[leader], "app", "text/x-lua", src, strlen(src), &d) !=
           201) {
        if (pc_test_now_ms() > deadline)
            fail_with_views("the leader accepted no write");
        pc_test_sleep_ms(50); /* 503 until its first barrier applied */
    }
    /* The leader's view once it shows the write applied (it is refreshed
     * on a timer). */
    json_t *v = NULL;
    for (;;) {
        v = cluster_view(leader);
        assert_non_null(v);
        assert_true(view_is(v, "leader"));
        if (view_int(v, "last_applied") == view_int(v, "last_index") &&
            view_int(v, "last_applied") >= 2)
            break;
        json_decref(v);
        if (pc_test_now_ms() > deadline)
            fail_with_views("the leader's view does not show the write");
        pc_test_sleep_ms(50);
    }
    int64_t term = view_int(v, "term");
    int64_t commit = view_int(v, "last_applied");
    json_decref(v);
    for (int i = 0; i < 3; i++)
        if (i != leader)
            wait_follower_applied(i, commit);

    const char *impatient[] = {"--raft-election-ms", "50", NULL};
    for (int k = 0; k < RESTARTS; k++) {
        int follower = (leader + 1) % 3;
        pc_proc_kill9(cl.node[follower].proc);
        pc_proc_free(cl.node[follower].proc);
        cl.node[follower].proc = NULL;
        pc_test_cluster_start_node(&env, &cl, follower, false, impatient);
        /* Back in the cluster: it heard from a leader and applied what was
         * committed before it died (a new leader, without pre-vote). */
        wait_follower_applied(follower, commit);

        v = cluster_view(leader);
        if (v == NULL || !view_is(v, "leader") || view_int(v, "term") != term ||
            view_int(v, "leader_id") != leader + 1) {
            char what[200];
            snprintf(what, sizeof(what),
                     "restart %d of node %d deposed leader %d (term %lld before)", k + 1,
                     follower + 1, leader + 1, (long long)term);
            json_decref(v);
            fail_with_views(what);
        }
        json_decref(v);
        /* Its own term did not move either (its leader_id may read 0 for a
         * moment: it runs pre-vote rounds whenever a heartbeat is late). */
        v = cluster_view(follower);
        assert_non_null(v);
        assert_int_equal(view_int(v, "term"), term);
        json_decref(v);
    }
    pc_test_cluster_stop(&cl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_restarted_follower_keeps_the_leader),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
