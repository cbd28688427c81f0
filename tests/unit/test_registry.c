/* test_registry.c - records in the store's meta key space: typed reads of
 * any size, walks in key order that stop on a callback's value, damaged
 * records reported rather than skipped, and ids of any size. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "registry.h"

static char dir[512];
static pc_store *store;

static int setup(void **state)
{
    pc_test_init();
    pc_test_tmpdir(dir, sizeof(dir), "registry");
    pc_store_options opt = {0};
    assert_int_equal(pc_store_open(&store, dir, &opt, NULL), PC_OK);
    return 0;
}

static int teardown(void **state)
{
    pc_store_close(store);
    pc_test_rm_rf(dir);
    return 0;
}

static void put_token(const char *id, uint8_t fill, size_t n_tenants, const char *name)
{
    uint8_t hash[PC_HASH_LEN];
    memset(hash, fill, sizeof(hash));
    char names[16][64];
    char *tenants[16];
    for (size_t i = 0; i < n_tenants; i++) {
        /* 63-character names: 16 of them make a record over 1 KiB. */
        snprintf(names[i], sizeof(names[i]), "%02zu%061d", i, 0);
        tenants[i] = names[i];
    }
    Popcast__TokenRecord t = POPCAST__TOKEN_RECORD__INIT;
    t.id = (char *)id;
    t.name = (char *)name;
    t.hash.data = hash;
    t.hash.len = PC_HASH_LEN;
    t.tenants = tenants;
    t.n_tenants = n_tenants;
    pc_err err;
    assert_int_equal(pc_registry_put_token(store, &t, &err), PC_OK);
}

static int count_tokens(void *arg, const Popcast__TokenRecord *t)
{
    (*(int *)arg)++;
    return 0;
}

static int stop_at_second(void *arg, const Popcast__TokenRecord *t)
{
    return ++*(int *)arg == 2 ? -42 : 0;
}

static void test_tokens(void **state)
{
    put_token("aaaaaaaaaaaaaaaa", 0x11, 1, "small");
    put_token("bbbbbbbbbbbbbbbb", 0x22, 16, "large");
    put_token("cccccccccccccccc", 0x33, 2, "third");
    uint8_t hash[PC_HASH_LEN];
    memset(hash, 0x22, sizeof(hash));
    Popcast__TokenRecord *t = NULL;
    pc_err err;
    /* A record over any fixed buffer reads whole. */
    assert_int_equal(pc_registry_get_token(store, hash, &t, &err), PC_OK);
    assert_true(popcast__token_record__get_packed_size(t) > 1024);
    assert_string_equal(t->name, "large");
    assert_int_equal(t->n_tenants, 16);
    popcast__token_record__free_unpacked(t, NULL);
    memset(hash, 0x44, sizeof(hash));
    assert_int_equal(pc_registry_get_token(store, hash, &t, &err), PC_E_NOTFOUND);

    assert_int_equal(pc_registry_find_token(store, "cccccccccccccccc", &t, &err), PC_OK);
    assert_string_equal(t->name, "third");
    popcast__token_record__free_unpacked(t, NULL);
    assert_int_equal(pc_registry_find_token(store, "dddddddddddddddd", &t, &err), PC_E_NOTFOUND);

    int n = 0;
    assert_int_equal(pc_registry_foreach_token(store, count_tokens, &n, &err), PC_OK);
    assert_int_equal(n, 3);
    n = 0;
    assert_int_equal(pc_registry_foreach_token(store, stop_at_second, &n, &err), -42);
    assert_int_equal(n, 2);

    /* A record without a hash is refused and changes nothing. */
    Popcast__TokenRecord bad = POPCAST__TOKEN_RECORD__INIT;
    bad.id = "eeeeeeeeeeeeeeee";
    assert_int_equal(pc_registry_put_token(store, &bad, &err), PC_E_INVALID);
    n = 0;
    assert_int_equal(pc_registry_foreach_token(store, count_tokens, &n, &err), PC_OK);
    assert_int_equal(n, 3);
}

static void test_damaged_records_are_errors(void **state)
{
    pc_err err;
    /* Bytes that are not a TokenRecord under a token key. */
    char key[128];
    char hex[PC_HEX_HASH_LEN];
    uint8_t hash[PC_HASH_LEN];
    memset(hash, 0x55, sizeof(hash));
    pc_hex(hex, hash, PC_HASH_LEN);
    snprintf(key, sizeof(key), "token.%s", hex);
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    assert_int_equal(pc_store_meta_put(store, key, junk, sizeof(junk), &err), PC_OK);
    Popcast__TokenRecord *t = NULL;
    assert_int_equal(pc_registry_get_token(store, hash, &t, &err), PC_E_STORE);
    assert_non_null(strstr(err.msg, "does not decode"));
    int n = 0;
    assert_int_equal(pc_registry_foreach_token(store, count_tokens, &n, &err), PC_E_STORE);
    /* An agent record whose key is not 32 bytes is damaged too. */
    Popcast__AgentRecord a = POPCAST__AGENT_RECORD__INIT;
    a.agent_id = "edge-1";
    uint8_t pk[PC_PK_LEN] = {1};
    a.public_key.data = pk;
    a.public_key.len = 31;
    assert_int_equal(pc_registry_put_agent(store, &a, &err), PC_E_INVALID);
    a.public_key.len = PC_PK_LEN;
    assert_int_equal(pc_registry_put_agent(store, &a, &err), PC_OK);
    Popcast__AgentRecord *got = NULL;
    assert_int_equal(pc_registry_get_agent(store, "edge-1", &got, &err), PC_OK);
    assert_memory_equal(got->public_key.data, pk, PC_PK_LEN);
    popcast__agent_record__free_unpacked(got, NULL);
    assert_int_equal(pc_registry_get_agent(store, "edge-2", &got, &err), PC_E_NOTFOUND);
    assert_int_equal(pc_registry_get_agent(store, "../x", &got, &err), PC_E_NOTFOUND);
    assert_int_equal(pc_registry_get_agent(store, NULL, &got, &err), PC_E_NOTFOUND);
}

static int collect_node(void *arg, const Popcast__ClusterNode *n)
{
    uint64_t *ids = arg;
    ids[ids[0] + 1] = n->id;
    ids[0]++;
    return 0;
}

static void test_nodes_of_any_id(void **state)
{
    pc_err err;
    uint64_t want[] = {1, 300, 4000000000ULL, UINT64_MAX};
    for (size_t i = 0; i < 4; i++) {
        Popcast__ClusterNode n = POPCAST__CLUSTER_NODE__INIT;
        n.id = want[i];
        n.raft_address = "127.0.0.1:7073";
        n.api_url = "http://127.0.0.1:7070";
        assert_int_equal(pc_registry_put_node(store, &n, &err), PC_OK);
    }
    Popcast__ClusterNode zero = POPCAST__CLUSTER_NODE__INIT;
    assert_int_equal(pc_registry_put_node(store, &zero, &err), PC_E_INVALID);
    uint64_t got[8] = {0};
    assert_int_equal(pc_registry_foreach_node(store, collect_node, got, &err), PC_OK);
    assert_int_equal(got[0], 4);
    for (size_t i = 0; i < 4; i++) {
        bool seen = false;
        for (size_t k = 0; k < 4; k++)
            seen = seen || got[k + 1] == want[i];
        assert_true(seen);
    }
}

/* The report counter's floor: from the store when the clock is behind it
 * (stepped back, or restarts within one microsecond), from the clock when
 * it is ahead (as after a wiped store, which starts from nothing). The
 * "clock" is a parameter here, in microseconds. */
static void test_report_floor_grows_across_reopen(void **state)
{
    pc_err err;
    uint64_t f1 = 0, f2 = 0, f3 = 0;
    assert_int_equal(pc_registry_next_report_floor(store, 1000, &f1, &err), PC_OK);
    assert_int_equal(f1, 1000);
    /* The same instant, then a clock stepped back: still growing. */
    assert_int_equal(pc_registry_next_report_floor(store, 1000, &f2, &err), PC_OK);
    assert_int_equal(f2, 1001);
    assert_int_equal(pc_registry_next_report_floor(store, 5, &f3, &err), PC_OK);
    assert_int_equal(f3, 1002);
    pc_store_close(store);
    pc_store_options opt = {0};
    assert_int_equal(pc_store_open(&store, dir, &opt, NULL), PC_OK);
    assert_int_equal(pc_registry_next_report_floor(store, 0, &f3, &err), PC_OK);
    assert_int_equal(f3, 1003);
    /* The clock ahead of the stored floor wins. */
    assert_int_equal(pc_registry_next_report_floor(store, 2000, &f3, &err), PC_OK);
    assert_int_equal(f3, 2000);
    /* A damaged floor is an error, not a restart from 1. */
    assert_int_equal(pc_store_meta_put(store, "status_epoch", "abc", 3, &err), PC_OK);
    assert_int_equal(pc_registry_next_report_floor(store, 3000, &f3, &err), PC_E_STORE);
    uint8_t full[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(pc_store_meta_put(store, "status_epoch", full, 8, &err), PC_OK);
    assert_int_equal(pc_registry_next_report_floor(store, 3000, &f3, &err), PC_E_INVALID);
}

/* A wiped store (a new one in another directory) starts from the clock,
 * so its counters are above those of the store it replaces, including
 * counters that store's agent made before the wipe (they were its clock
 * too). An older agent's epoch-shaped value (a small number) is below any
 * clock reading. */
static void test_report_floor_after_wipe(void **state)
{
    pc_err err;
    uint64_t before = 0, after = 0;
    uint8_t old_epoch[8] = {0, 0, 0, 0, 0, 0, 0, 7};
    assert_int_equal(pc_store_meta_put(store, "status_epoch", old_epoch, 8, &err), PC_OK);
    assert_int_equal(pc_registry_next_report_floor(store, 1700000000000000, &before, &err), PC_OK);
    assert_int_equal(before, 1700000000000000);
    char other[256];
    pc_test_tmpdir(other, sizeof(other), "wiped");
    pc_store *fresh = NULL;
    pc_store_options opt = {0};
    assert_int_equal(pc_store_open(&fresh, other, &opt, NULL), PC_OK);
    assert_int_equal(pc_registry_next_report_floor(fresh, 1700000005000000, &after, &err), PC_OK);
    assert_true(after > before);
    pc_store_close(fresh);
    pc_test_rm_rf(other);
}

static int count_deployment(void *arg, const Popcast__DeploymentRecord *d)
{
    (void)d;
    (*(int *)arg)++;
    return 0;
}

/* Deployments: every record is listed; only the open ones are in the
 * index the leader's driver walks, and a record that ends leaves it in
 * the same write. */
static void test_open_deployments_index(void **state)
{
    Popcast__DeploymentRecord d = POPCAST__DEPLOYMENT_RECORD__INIT;
    d.tenant = "web";
    d.version = 3;
    for (uint64_t id = 1; id <= 3; id++) {
        d.id = id;
        assert_int_equal(pc_registry_put_deployment(store, &d, id != 2, NULL), PC_OK);
    }
    d.tenant = "api";
    d.id = 1;
    assert_int_equal(pc_registry_put_deployment(store, &d, true, NULL), PC_OK);
    int all = 0, open = 0, web = 0;
    assert_int_equal(pc_registry_foreach_deployment(store, NULL, count_deployment, &all, NULL),
                     PC_OK);
    assert_int_equal(pc_registry_foreach_open_deployment(store, count_deployment, &open, NULL),
                     PC_OK);
    assert_int_equal(pc_registry_foreach_deployment(store, "web", count_deployment, &web, NULL),
                     PC_OK);
    assert_int_equal(all, 4);
    assert_int_equal(open, 3);
    assert_int_equal(web, 3);
    /* web 3 ends: out of the index; ending again is no error. */
    d.tenant = "web";
    d.id = 3;
    assert_int_equal(pc_registry_put_deployment(store, &d, false, NULL), PC_OK);
    assert_int_equal(pc_registry_put_deployment(store, &d, false, NULL), PC_OK);
    open = 0;
    assert_int_equal(pc_registry_foreach_open_deployment(store, count_deployment, &open, NULL),
                     PC_OK);
    assert_int_equal(open, 2);
    Popcast__DeploymentRecord *got = NULL;
    assert_int_equal(pc_registry_get_deployment(store, "web", 3, &got, NULL), PC_OK);
    assert_int_equal(got->version, 3);
    popcast__deployment_record__free_unpacked(got, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_damaged_records_are_errors),
        cmocka_unit_test(test_nodes_of_any_id),
        cmocka_unit_test(test_report_floor_grows_across_reopen),
        cmocka_unit_test(test_report_floor_after_wipe),
        cmocka_unit_test(test_open_deployments_index),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
