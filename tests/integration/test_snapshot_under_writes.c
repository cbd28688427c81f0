/* test_snapshot_under_writes.c - an agent that needs a snapshot gets one
 * while deploys keep coming.
 *
 * A snapshot is installed only when its seq is not past the head of the
 * last signed heartbeat (docs/security.md). Heartbeats come every
 * heartbeat_ms; under a steady stream of writes the head moves in
 * between, so a snapshot served now is nearly always past the last
 * heartbeat's head. An agent that threw such a snapshot away and asked
 * for a new one got the same refusal every time, and never converged
 * until the writes stopped. It keeps the snapshot and waits for the
 * heartbeat that reaches it. Bounded waits.
 *
 * The agent sits across a WAN link (harness/wan.h) 100 ms each way from
 * the controller: a snapshot is then read some 400 ms after the
 * heartbeat that prompted it was sent, so the writes made meanwhile put
 * it past that heartbeat's head, and it is checked long before the next
 * heartbeat (every 2 s) comes. On loopback that took a write within the
 * millisecond or two between heartbeat and snapshot; with 500 tenants the
 * snapshot took so long to cross that the next heartbeat came first. On
 * a busy machine either way ended with 3 snapshots and no wait. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "wan.h"

typedef struct stream {
    pc_test_env *env;
    pc_test_controller *ctl;
    atomic_int stop;
    atomic_int deployed;
    atomic_int failed;
    atomic_int next;
} stream;

/* Writers: enough that the head moves within the 400 ms between a
 * heartbeat and the snapshot it prompts, even on a busy machine. */
#define WRITERS 4
/* Snapshots the agent must install while the writes go on. */
#define SNAPSHOTS 3

/* Tenants the writes go to: few, so that a snapshot crosses the link
 * well within a heartbeat period (one that took longer would see the next
 * heartbeat arrive before it is checked, and need no wait). */
#define STREAM_TENANTS 16

/* One deploy after another (tenants s0000 .. s0015, in turn) until
 * stopped. */
static void *stream_run(void *arg)
{
    stream *st = arg;
    while (!atomic_load(&st->stop)) {
        int i = atomic_fetch_add(&st->next, 1);
        char tenant[32], src[256], body[64];
        snprintf(tenant, sizeof(tenant), "s%04d", i % STREAM_TENANTS);
        snprintf(body, sizeof(body), "deploy %d", i);
        pc_test_lua_hello(src, sizeof(src), body);
        pc_test_deployed d;
        if (pc_test_try_deploy(st->env, st->ctl, tenant, "text/x-lua", src, strlen(src), &d) == 201)
            atomic_fetch_add(&st->deployed, 1);
        else
            atomic_fetch_add(&st->failed, 1);
    }
    return NULL;
}

static void test_snapshot_while_writes_continue(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_wan_pop pop;
    const pc_wan_spec far = {.delay_ms = 100};
    pc_wan_add_pop(&pop, 1, "far", &far, 1);
    pc_test_controller ctl = {0};
    /* An agent more than 8 entries behind needs a snapshot (by default
     * it would need to be further behind than the tenants too:
     * test_catch_up_or_snapshot.c). */
    const char *ctl_flags[] = {"--snapshot-lag", "8",    "--snapshot-lag-tenants=false",
                               "--heartbeat-ms", "2000", NULL};
    /* On every address of the core: the agent reaches it across the link. */
    pc_test_place(NULL, "0.0.0.0");
    pc_test_controller_start(&env, &ctl, ctl_flags);
    pc_test_place(NULL, NULL);
    char pub_url[64], sync_url[64];
    snprintf(pub_url, sizeof(pub_url), "tcp://%s:%d", pop.core_addr, ctl.pub_port);
    snprintf(sync_url, sizeof(sync_url), "tcp://%s:%d", pop.core_addr, ctl.sync_port);
    const char *subs[] = {pub_url, NULL}, *syncs[] = {sync_url, NULL};
    /* An agent that has heard heartbeats (a new one takes its first
     * snapshot before any), and then gets no entry on pub/sub: every
     * heartbeat finds it more than snapshot_lag behind. */
    pc_test_agent agent = {0};
    const char *deaf[] = {"--test-drop-permille", "1000", "--test-drop-seed", "7", NULL};
    pc_test_place(pop.netns, pop.pop_addr);
    pc_test_agent_start(&env, &agent, "late", subs, syncs, deaf);
    pc_test_place(NULL, NULL);
    pc_test_agent_wait_subscribed(&agent);
    stream st = {.env = &env, .ctl = &ctl};
    pthread_t t[WRITERS];
    for (int i = 0; i < WRITERS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, stream_run, &st), 0);
    /* The writes go on meanwhile: the agent must get its snapshots
     * anyway, each within a few heartbeats of falling behind again. One
     * taken by luck (no write between a heartbeat and the snapshot)
     * happened now and then before the fix; three in a row did not. */
    uint64_t installed = 0;
    int64_t deadline = pc_test_now_ms() + 30000;
    while ((installed = pc_test_agent_metric(&agent, "popcast_agent_snapshots_installed_total")) <
               SNAPSHOTS &&
           pc_test_now_ms() < deadline)
        pc_test_sleep_ms(100);
    int during = atomic_load(&st.deployed);
    uint64_t head_then = pc_test_controller_head(&env, &ctl);
    atomic_store(&st.stop, 1);
    for (int i = 0; i < WRITERS; i++)
        pthread_join(t[i], NULL);
    uint64_t waits = pc_test_agent_metric(&agent, "popcast_agent_snapshot_head_waits_total");
    print_message("snapshots installed: %llu (%llu kept for a heartbeat), while %d deploys were "
                  "made (head %llu)\n",
                  (unsigned long long)installed, (unsigned long long)waits, during,
                  (unsigned long long)head_then);
    assert_true(installed >= SNAPSHOTS);
    assert_true(waits >= 1);
    assert_int_equal(atomic_load(&st.failed), 0);
    /* And it converges: applied to the head, serving the last deploy. */
    uint64_t head = pc_test_controller_head(&env, &ctl);
    deadline = pc_test_now_ms() + 30000;
    while (pc_test_agent_applied_seq(&agent) < head && pc_test_now_ms() < deadline)
        pc_test_sleep_ms(50);
    assert_int_equal(pc_test_agent_applied_seq(&agent), head);
    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_wan_remove_pop(&pop);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    pc_test_init();
    /* Before anything binds: the test lives in its own core namespace. */
    pc_wan_enter_core();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_snapshot_while_writes_continue),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
