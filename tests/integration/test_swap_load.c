/* test_swap_load.c - hot swap under traffic. Client threads send requests
 * without pause to two tenants while 100 versions of one of them are
 * deployed. Asserted: no transport error and no 5xx; every response names
 * a version that was live at some point during the request (never one
 * deployed after the request ended, never one older than a version already
 * confirmed live when the request started); each response's body comes
 * from the version its header names; versions seen by one client never go
 * backwards; and afterwards the agent holds no more Lua versions and
 * isolates than before (no leak across swaps). */
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

#define CLIENTS  4
#define VERSIONS 100

static pc_test_env env;
static pc_test_controller ctl;
static pc_test_agent agent;

/* Per version of "busy": when its deploy started, and when the controller
 * confirmed it live on the agent (ms, pc_test_now_ms). */
static _Atomic int64_t deploy_started[VERSIONS + 2];
static _Atomic int64_t confirmed_live[VERSIONS + 2];
static atomic_int stop_clients;

typedef struct client {
    int id;
    const char *tenant;
    long requests, errors, bad;
    char first_error[256];
} client;

__attribute__((format(printf, 2, 3))) static void record_bad(client *c, const char *fmt, ...)
{
    if (c->bad++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->first_error, sizeof(c->first_error), fmt, ap);
        va_end(ap);
    }
}

/* The newest version confirmed live before t. */
static uint64_t confirmed_before(int64_t t)
{
    uint64_t v = 0;
    for (uint64_t i = 1; i <= VERSIONS + 1; i++) {
        int64_t at = atomic_load(&confirmed_live[i]);
        if (at != 0 && at <= t)
            v = i;
    }
    return v;
}

static void *run_client(void *arg)
{
    client *c = arg;
    uint64_t last = 0;
    const char *headers[] = {"X-Popcast-Tenant", c->tenant, NULL};
    while (!atomic_load(&stop_clients)) {
        int64_t start = pc_test_now_ms();
        pc_http_result r;
        if (pc_http_call(agent.edge_url, "GET", "/", headers, NULL, 0, 30000, &r, NULL) != PC_OK) {
            if (c->errors++ == 0)
                snprintf(c->first_error, sizeof(c->first_error), "transport error");
            continue;
        }
        int64_t end = pc_test_now_ms();
        c->requests++;
        const char *vh = pc_http_result_header(&r, "X-Popcast-Version");
        uint64_t v = vh ? strtoull(vh, NULL, 10) : 0;
        char want[64];
        snprintf(want, sizeof(want), "%s v%llu", c->tenant, (unsigned long long)v);
        if (r.status != 200) {
            record_bad(c, "status %d (version %llu)", r.status, (unsigned long long)v);
        } else if (r.body_len != strlen(want) || memcmp(r.body, want, r.body_len) != 0) {
            record_bad(c, "body does not come from the version in the header (v%llu, %zu bytes)",
                       (unsigned long long)v, r.body_len);
        } else if (v < last) {
            record_bad(c, "version went backwards: %llu after %llu", (unsigned long long)v,
                       (unsigned long long)last);
        } else if (strcmp(c->tenant, "busy") == 0) {
            if (v > VERSIONS + 1 || atomic_load(&deploy_started[v]) == 0 ||
                atomic_load(&deploy_started[v]) > end)
                record_bad(c, "v%llu answered before its deploy started (request %lld)",
                           (unsigned long long)v, (long long)start);
            else if (v < confirmed_before(start))
                record_bad(c, "v%llu answered after v%llu was confirmed live",
                           (unsigned long long)v, (unsigned long long)confirmed_before(start));
        }
        last = v;
        pc_http_result_free(&r);
    }
    return NULL;
}

static void deploy_version(const char *tenant, uint64_t expect)
{
    char src[512];
    /* A little work per request keeps requests in flight across swaps. */
    snprintf(src, sizeof(src),
             "local me = '%s v%llu'\n"
             "return function(req)\n"
             "  local x = 0\n"
             "  for i = 1, 20000 do x = x + i end\n"
             "  return me\n"
             "end\n",
             tenant, (unsigned long long)expect);
    if (strcmp(tenant, "busy") == 0)
        atomic_store(&deploy_started[expect], pc_test_now_ms());
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, tenant, src), expect);
    char url[128];
    snprintf(url, sizeof(url), "/v1/tenants/%s/versions/%llu/rollout?wait=60000", tenant,
             (unsigned long long)expect);
    pc_http_result r;
    assert_int_equal(pc_test_api(&env, &ctl, "GET", url, NULL, NULL, 0, &r), 200);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    assert_string_equal(json_string_value(json_object_get(doc, "wait")), "complete");
    json_decref(doc);
    if (strcmp(tenant, "busy") == 0)
        atomic_store(&confirmed_live[expect], pc_test_now_ms());
}

static void test_swap_under_load(void **state)
{
    pc_test_env_init(&env);
    pc_test_controller_start(&env, &ctl, NULL);
    const char *flags[] = {"--lua-max-isolates", "8", NULL};
    pc_test_agent_start_for(&env, &agent, "edge", &ctl, flags);
    deploy_version("busy", 1);
    deploy_version("steady", 1);

    client clients[CLIENTS];
    pthread_t threads[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        memset(&clients[i], 0, sizeof(clients[i]));
        clients[i].id = i;
        clients[i].tenant = i % 2 == 0 ? "busy" : "steady";
        assert_int_equal(pthread_create(&threads[i], NULL, run_client, &clients[i]), 0);
    }
    pc_test_sleep_ms(200);
    uint64_t versions_before = pc_test_agent_metric(&agent, "popcast_lua_versions");
    uint64_t isolates_before = pc_test_agent_metric(&agent, "popcast_lua_isolates");
    for (uint64_t v = 2; v <= VERSIONS + 1; v++)
        deploy_version("busy", v);
    pc_test_sleep_ms(200);
    atomic_store(&stop_clients, 1);
    long total = 0;
    for (int i = 0; i < CLIENTS; i++) {
        pthread_join(threads[i], NULL);
        total += clients[i].requests;
        if (clients[i].errors != 0 || clients[i].bad != 0)
            fail_msg("client %d (%s): %ld transport errors, %ld bad answers of %ld; first: %s", i,
                     clients[i].tenant, clients[i].errors, clients[i].bad, clients[i].requests,
                     clients[i].first_error);
    }
    /* Traffic really ran across the swaps. */
    assert_true(total > 2 * VERSIONS);
    assert_true(clients[0].requests > VERSIONS / 2);

    /* Old versions and their isolates are all freed: two tenants, one
     * version each, and no more isolates than under load. */
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (pc_test_agent_metric(&agent, "popcast_lua_versions") != 2 && pc_test_now_ms() < deadline)
        pc_test_sleep_ms(50);
    assert_int_equal(pc_test_agent_metric(&agent, "popcast_lua_versions"), 2);
    assert_int_equal(versions_before, 2);
    uint64_t isolates_after = pc_test_agent_metric(&agent, "popcast_lua_isolates");
    if (isolates_after > 2 * 8)
        fail_msg("%llu isolates after the swaps (%llu before)", (unsigned long long)isolates_after,
                 (unsigned long long)isolates_before);
    print_message("requests: %ld across %d swaps; isolates before %llu, after %llu\n", total,
                  VERSIONS, (unsigned long long)isolates_before,
                  (unsigned long long)isolates_after);
    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_swap_under_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
