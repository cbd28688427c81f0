/* test_agent_crash.c - kill -9 an agent at random moments while deploys
 * stream in, 50 times (fixed seed). After each kill the agent's LMDB store,
 * read directly by the test, holds a complete prefix of the log: applied
 * seq N, every tenant exactly as the controller left it at seq N, nothing
 * after N. After each restart it converges. */
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
#include "store.h"

#define KILLS       50
#define TENANTS     6
#define MAX_DEPLOYS 20000

/* What the controller answered for each seq (index seq). */
typedef struct deployed {
    char tenant[16];
    uint64_t version;
    char hash[PC_HEX_HASH_LEN];
} deployed;

static pc_test_env env;
static pc_test_controller ctl;
static deployed log_by_seq[MAX_DEPLOYS + 1];
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t log_known; /* every seq <= log_known is recorded */
static atomic_int stop_deploying;
static atomic_int deploy_failures;

static void *deployer(void *arg)
{
    unsigned seed = 1234;
    for (int i = 0; !atomic_load(&stop_deploying) && i < MAX_DEPLOYS; i++) {
        char tenant[16], src[256], body[64];
        snprintf(tenant, sizeof(tenant), "t%d", rand_r(&seed) % TENANTS);
        snprintf(body, sizeof(body), "stream %d", i);
        pc_test_lua_hello(src, sizeof(src), body);
        pc_test_deployed d;
        if (pc_test_try_deploy(&env, &ctl, tenant, "text/x-lua", src, strlen(src), &d) != 201 ||
            d.seq == 0 || d.seq > MAX_DEPLOYS) {
            atomic_fetch_add(&deploy_failures, 1);
            continue;
        }
        pthread_mutex_lock(&log_lock);
        snprintf(log_by_seq[d.seq].tenant, sizeof(log_by_seq[d.seq].tenant), "%s", tenant);
        log_by_seq[d.seq].version = d.version;
        snprintf(log_by_seq[d.seq].hash, sizeof(log_by_seq[d.seq].hash), "%s", d.hash);
        /* One deployer: answers arrive in seq order. */
        log_known = d.seq;
        pthread_mutex_unlock(&log_lock);
        /* A little spacing so kills land before, during and after applies. */
        struct timespec ts = {0, (long)(rand_r(&seed) % 3) * 1000000L};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

/* Reads the dead agent's store and checks it is exactly the controller's
 * state as of the store's applied seq. Returns that seq. */
static uint64_t check_prefix(const char *dir)
{
    pc_store_options opt = {0};
    pc_store *s = NULL;
    pc_err err;
    if (pc_store_open(&s, dir, &opt, &err) != PC_OK)
        fail_msg("cannot open the killed agent's store: %s", err.msg);
    uint64_t n = 0;
    assert_int_equal(pc_store_applied_seq(s, &n, &err), PC_OK);
    /* The agent may have applied entries whose HTTP answer the deployer
     * has not recorded yet: wait for the log to cover n. */
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (;;) {
        pthread_mutex_lock(&log_lock);
        uint64_t known = log_known;
        pthread_mutex_unlock(&log_lock);
        if (known >= n)
            break;
        if (pc_test_now_ms() > deadline)
            fail_msg("the store holds seq %llu that the controller never answered",
                     (unsigned long long)n);
        pc_test_sleep_ms(5);
    }
    uint64_t first = 0, last = 0;
    assert_int_equal(pc_store_log_bounds(s, &first, &last, &err), PC_OK);
    assert_int_equal(last, n);
    /* An agent that missed the first entries on pub/sub before its
     * connection was up catches up with a snapshot: the log then starts
     * after it (store.h, pc_store_install_snapshot). From there on, every
     * seq must be present. */
    if (first == 0)
        first = 1;
    assert_true(first <= n + 1);
    for (uint64_t seq = first; seq <= n; seq++) {
        Popcast__LogRecord *rec = NULL;
        if (pc_store_get_log(s, seq, &rec, &err) != PC_OK)
            fail_msg("seq %llu is missing below the applied seq %llu", (unsigned long long)seq,
                     (unsigned long long)n);
        popcast__log_record__free_unpacked(rec, NULL);
    }
    pthread_mutex_lock(&log_lock);
    for (int t = 0; t < TENANTS; t++) {
        char name[16];
        snprintf(name, sizeof(name), "t%d", t);
        const deployed *want = NULL;
        for (uint64_t seq = 1; seq <= n; seq++)
            if (strcmp(log_by_seq[seq].tenant, name) == 0)
                want = &log_by_seq[seq];
        pc_tenant_state st;
        int rc = pc_store_get_tenant(s, name, &st, &err);
        if (want == NULL) {
            if (rc != PC_E_NOTFOUND)
                fail_msg("%s is in the store before its first deploy", name);
            continue;
        }
        if (rc != PC_OK)
            fail_msg("%s missing from the store at seq %llu", name, (unsigned long long)n);
        char hex[PC_HEX_HASH_LEN];
        pc_hex(hex, st.active_hash, PC_HASH_LEN);
        if (st.active_version != want->version || strcmp(hex, want->hash) != 0)
            fail_msg("%s at seq %llu: store has v%llu %s, controller had v%llu %s", name,
                     (unsigned long long)n, (unsigned long long)st.active_version, hex,
                     (unsigned long long)want->version, want->hash);
        if (!pc_store_has_blob(s, st.active_hash))
            fail_msg("%s: the active version's bundle is missing", name);
        assert_true(st.live_version <= st.active_version);
    }
    pthread_mutex_unlock(&log_lock);
    pc_store_close(s);
    return n;
}

static uint64_t status_number(pc_test_agent *a, const char *object, const char *name)
{
    json_t *st = pc_test_agent_status(a);
    json_t *in = object != NULL ? json_object_get(st, object) : st;
    uint64_t v = (uint64_t)json_integer_value(json_object_get(in, name));
    json_decref(st);
    return v;
}

/* Polls until the agent's status says object.name >= want. */
static void wait_status_at_least(pc_test_agent *a, const char *object, const char *name,
                                 uint64_t want)
{
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (status_number(a, object, name) < want) {
        if (pc_test_now_ms() > deadline) {
            pc_proc_dump_log(a->proc);
            fail_msg("the agent's %s did not reach %llu", name, (unsigned long long)want);
        }
        pc_test_sleep_ms(10);
    }
}

static void test_kill_9_agent_during_deploys(void **state)
{
    pc_test_env_init(&env);
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agent = {0};
    pc_test_agent_start_for(&env, &agent, "victim", &ctl, NULL);
    /* An agent with nothing applied that sees a gap catches up through a
     * snapshot, which stores no log records: the prefix checked below
     * would have a hole. So the stream starts once its subscription is
     * live (a heartbeat came through), and the first kill waits for a
     * first applied entry. */
    pc_test_agent_wait_subscribed(&agent);
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, deployer, NULL), 0);
    wait_status_at_least(&agent, NULL, "applied_seq", 1);

    srand(20261123);
    uint64_t lowest = UINT64_MAX, highest = 0;
    for (int k = 0; k < KILLS; k++) {
        pc_test_sleep_ms(10 + rand() % 60);
        pc_proc_kill9(agent.proc);
        pc_proc_free(agent.proc);
        agent.proc = NULL;
        uint64_t n = check_prefix(agent.dir);
        lowest = n < lowest ? n : lowest;
        highest = n > highest ? n : highest;
        pc_test_agent_start_for(&env, &agent, "victim", &ctl, NULL);
        /* It converges after each restart: caught up with what was
         * committed when it came back, before the next kill (an agent
         * killed again and again before it catches up falls more than
         * snapshot_lag behind, and gets a snapshot). */
        pthread_mutex_lock(&log_lock);
        uint64_t known = log_known;
        pthread_mutex_unlock(&log_lock);
        wait_status_at_least(&agent, NULL, "applied_seq", known);
    }
    atomic_store(&stop_deploying, 1);
    pthread_join(thread, NULL);
    assert_int_equal(atomic_load(&deploy_failures), 0);
    assert_true(highest > 50); /* deploys really streamed during the kills */

    pc_test_wait_converged(&env, &ctl, &agent, 1);
    json_t *st = pc_test_agent_status(&agent);
    assert_int_equal((uint64_t)json_integer_value(json_object_get(st, "applied_seq")), log_known);
    json_decref(st);
    print_message("kills: %d, applied seq at the kills from %llu to %llu, final %llu\n", KILLS,
                  (unsigned long long)lowest, (unsigned long long)highest,
                  (unsigned long long)log_known);
    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill_9_agent_during_deploys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
