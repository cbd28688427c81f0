/* test_group_commit.c - group commit through a 3-node cluster: deploys
 * from many clients at once are committed several to a raft entry, yet
 * each keeps its own seq and version (seqs gap-free and never shared,
 * each tenant's versions 1..n), every acknowledged one is on every node,
 * agents apply every seq exactly once, and nodes restarted one by one
 * replay their logs (batches included) into the same state. */
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

#define CLIENTS    8
#define PER_CLIENT 30
#define TENANTS    4
#define TOTAL      (CLIENTS * PER_CLIENT)

typedef struct ack {
    int tenant;
    int status;
    pc_test_deployed d;
} ack;

static pc_test_env env;
static pc_test_cluster cl;
static int leader;
static ack acks[TOTAL];

static void *client(void *arg)
{
    int k = (int)(intptr_t)arg;
    for (int i = 0; i < PER_CLIENT; i++) {
        ack *a = &acks[k * PER_CLIENT + i];
        a->tenant = (k + i) % TENANTS;
        char tenant[16], src[256], body[64];
        snprintf(tenant, sizeof(tenant), "gc%d", a->tenant);
        snprintf(body, sizeof(body), "client %d deploy %d", k, i);
        pc_test_lua_hello(src, sizeof(src), body);
        /* A redirect (leadership moved under load) was not committed:
         * safe to send again to the new leader. A 503 may have been
         * committed: it is kept, and fails the test below. */
        int to = leader;
        for (int tries = 0; tries < 20; tries++) {
            a->status = pc_test_try_deploy(&env, &cl.node[to], tenant, "text/x-lua", src,
                                           strlen(src), &a->d);
            if (a->status != 307)
                break;
            int now = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
            to = now >= 0 ? now : to;
        }
    }
    return NULL;
}

static json_t *node_json(int i, const char *path)
{
    return pc_test_controller_json(&env, &cl.node[i], path);
}

/* A counter from a node's /metrics (text format). */
static uint64_t node_counter(int i, const char *name)
{
    pc_http_result r;
    assert_int_equal(pc_test_api(&env, &cl.node[i], "GET", "/metrics", NULL, NULL, 0, &r), 200);
    char *text = strndup((const char *)r.body, r.body_len);
    pc_http_result_free(&r);
    assert_non_null(text);
    uint64_t value = 0;
    for (char *line = strtok(text, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        size_t n = strlen(name);
        if (strncmp(line, name, n) == 0 && line[n] == ' ')
            value = strtoull(line + n + 1, NULL, 10);
    }
    free(text);
    return value;
}

/* Every node's versions of every tenant, as one JSON object, once each
 * node's head is the leader's. */
static json_t *node_versions(int i)
{
    json_t *all = json_object();
    for (int t = 0; t < TENANTS; t++) {
        char path[64];
        snprintf(path, sizeof(path), "/v1/tenants/gc%d/versions", t);
        json_t *v = node_json(i, path);
        assert_non_null(v);
        char key[16];
        snprintf(key, sizeof(key), "gc%d", t);
        json_object_set_new(all, key, json_incref(json_object_get(v, "versions")));
        json_decref(v);
    }
    return all;
}

static uint64_t node_head(int i)
{
    return pc_test_controller_head(&env, &cl.node[i]);
}

static uint64_t cluster_field(int i, const char *name)
{
    json_t *c = node_json(i, "/v1/cluster");
    uint64_t v = c ? (uint64_t)json_integer_value(json_object_get(c, name)) : 0;
    json_decref(c);
    return v;
}

/* Waits until raft on node i has applied every entry the leader holds
 * (the store's head alone says nothing about a replay: it is on disk
 * before raft replays its log), then checks that no entry was refused. */
static void wait_replayed(int i)
{
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (;;) {
        int l = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
        assert_true(l >= 0);
        uint64_t last = cluster_field(l, "last_index");
        if (last > 0 && cluster_field(i, "last_applied") >= last)
            break;
        if (pc_test_now_ms() > deadline) {
            pc_proc_dump_log(cl.node[i].proc);
            fail_msg("node %d did not apply the leader's log", i + 1);
        }
        pc_test_sleep_ms(50);
    }
    FILE *f = fopen(cl.node[i].proc->log, "r");
    assert_non_null(f);
    char line[1024];
    while (fgets(line, sizeof(line), f) != NULL)
        if (strstr(line, "refused by the store") != NULL ||
            strstr(line, "cannot apply a committed entry") != NULL ||
            strstr(line, "does not follow this store") != NULL)
            fail_msg("node %d: %s", i + 1, line);
    fclose(f);
}

static void wait_head(int i, uint64_t head)
{
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (node_head(i) != head) {
        if (pc_test_now_ms() > deadline) {
            pc_proc_dump_log(cl.node[i].proc);
            fail_msg("node %d did not reach head %llu", i + 1, (unsigned long long)head);
        }
        pc_test_sleep_ms(50);
    }
}

static void test_concurrent_deploys_commit_together(void **state)
{
    (void)state;
    pc_test_env_init(&env);
    pc_test_cluster_init(&env, &cl, 3, 3, NULL);
    leader = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
    assert_true(leader >= 0);
    pc_test_agent agent = {0};
    pc_test_agent_start_cluster(&env, &agent, "edge", &cl, NULL);

    pthread_t threads[CLIENTS];
    for (int k = 0; k < CLIENTS; k++)
        assert_int_equal(pthread_create(&threads[k], NULL, client, (void *)(intptr_t)k), 0);
    for (int k = 0; k < CLIENTS; k++)
        pthread_join(threads[k], NULL);

    /* Every deploy acknowledged, each with a seq of its own: together
     * exactly 1..TOTAL; each tenant's versions exactly 1..n. */
    static bool seq_seen[TOTAL + 1];
    int versions[TENANTS] = {0};
    bool version_seen[TENANTS][TOTAL + 1];
    memset(version_seen, 0, sizeof(version_seen));
    for (int i = 0; i < TOTAL; i++) {
        if (acks[i].status != 201)
            fail_msg("deploy %d answered %d", i, acks[i].status);
        uint64_t seq = acks[i].d.seq, v = acks[i].d.version;
        assert_true(seq >= 1 && seq <= TOTAL);
        assert_false(seq_seen[seq]);
        seq_seen[seq] = true;
        assert_true(v >= 1 && v <= TOTAL);
        assert_false(version_seen[acks[i].tenant][v]);
        version_seen[acks[i].tenant][v] = true;
        versions[acks[i].tenant]++;
    }
    for (int t = 0; t < TENANTS; t++)
        for (int v = 1; v <= versions[t]; v++)
            assert_true(version_seen[t][v]);

    /* Group commit happened: fewer raft commands than changes (summed
     * over the nodes: only a leader proposes, and leadership may have
     * moved under load). With 8 writers and an fsync and a raft round trip
     * per command, writes queue behind each command in flight. */
    uint64_t commands = 0, changes = 0;
    for (int i = 0; i < cl.n; i++) {
        commands += node_counter(i, "popcast_controller_commit_commands_total");
        changes += node_counter(i, "popcast_controller_commit_changes_total");
    }
    print_message(
        "%d deploys from %d clients: %llu raft commands; the agent (subscribed to "
        "all 3 nodes) stored them in %llu group transactions\n",
        TOTAL, CLIENTS, (unsigned long long)commands,
        (unsigned long long)pc_test_agent_metric(&agent, "popcast_agent_apply_batches_total"));
    assert_int_equal(changes, TOTAL);
    assert_true(commands < changes);

    /* Every node holds the same versions; the agent applied every seq
     * exactly once. */
    for (int i = 0; i < cl.n; i++)
        wait_head(i, TOTAL);
    json_t *reference = node_versions(leader);
    for (int i = 0; i < cl.n; i++) {
        json_t *v = node_versions(i);
        if (!json_equal(reference, v))
            fail_msg("node %d's versions differ from the leader's", i + 1);
        json_decref(v);
    }
    pc_test_wait_converged(&env, &cl.node[leader], &agent, 1);
    json_t *st = pc_test_agent_status(&agent);
    assert_int_equal(json_integer_value(json_object_get(st, "applied_seq")), TOTAL);
    json_decref(st);

    /* Each node restarted replays its raft log over its store, batches
     * included: nothing conflicts, nothing changes. */
    for (int i = 0; i < cl.n; i++) {
        pc_test_controller_stop(&cl.node[i]);
        pc_test_cluster_start_node(&env, &cl, i, false, NULL);
        assert_true(pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS) >= 0);
        wait_replayed(i);
        wait_head(i, TOTAL);
        json_t *v = node_versions(i);
        if (!json_equal(reference, v))
            fail_msg("node %d's versions changed over its restart", i + 1);
        json_decref(v);
    }
    json_decref(reference);
    /* And the cluster still writes, after every seq so far. */
    leader = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
    char src[128];
    pc_test_lua_hello(src, sizeof(src), "after");
    pc_test_deployed d;
    assert_int_equal(
        pc_test_try_deploy(&env, &cl.node[leader], "gc0", "text/x-lua", src, strlen(src), &d), 201);
    assert_int_equal(d.seq, TOTAL + 1);
    assert_int_equal(d.version, versions[0] + 1);
    pc_test_wait_converged(&env, &cl.node[leader], &agent, 1);

    pc_test_agent_stop(&agent);
    pc_test_cluster_stop(&cl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_deploys_commit_together),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
