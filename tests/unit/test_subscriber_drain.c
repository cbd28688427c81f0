/* test_subscriber_drain.c - what one wake-up of the agent's loop takes
 * from the pub/sub queue (agent/subscriber.h): at most 64 messages and at
 * most 4 MiB of them (at least one), each connection's order kept, and
 * the rest taken at the next wake-ups. The messages handed up stay alive
 * while the applier unpacks a copy of each, outside the queue's byte
 * bound; taking 64 whatever their size let a flood of 1 MiB messages hold
 * about 128 MiB more than the bound (test_pubsub_flood). That test sees
 * it only through RSS, 8 times in 10; here the queue is filled while the
 * loop does not run, so every wake-up's take is exact. */
#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <cmocka.h>

#include "harness.h"
#include "subscriber.h"
#include "tls.h"

#define MIB   ((size_t)1 << 20)
#define SMALL 1000

typedef struct wakeups {
    size_t calls, messages, most_messages, most_bytes;
    size_t big_seen; /* 1 MiB messages, in the order sent */
    bool out_of_order;
    size_t small_seen; /* SMALL-byte messages (the probes are shorter) */
} wakeups;

static void on_batch(void *arg, const uint8_t *const *data, const size_t *len, size_t n)
{
    wakeups *w = arg;
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) {
        bytes += len[i];
        if (len[i] >= MIB) {
            /* Each big message starts with its index. */
            uint32_t idx;
            memcpy(&idx, data[i], sizeof(idx));
            if (idx != w->big_seen)
                w->out_of_order = true;
            w->big_seen++;
        } else if (len[i] == SMALL) {
            w->small_seen++;
        }
    }
    w->calls++;
    w->messages += n;
    if (n > w->most_messages)
        w->most_messages = n;
    if (bytes > w->most_bytes)
        w->most_bytes = bytes;
}

static void on_message(void *arg, const uint8_t *data, size_t len)
{
    (void)arg;
    (void)data;
    (void)len;
    fail_msg("the batch callback is set: the single one must not be called");
}

typedef struct fixture {
    uv_loop_t loop;
    pc_metrics *metrics;
    nng_socket pub;
    pc_subscriber *sub;
    wakeups w;
    char url[128];
} fixture;

/* A pub socket on a free port and a subscriber to it whose queue holds
 * 200 messages and 256 MiB, connected (a probe got through) before it
 * returns. The loop has not run: what is received stays queued. */
static void open_pair(fixture *f)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->metrics = pc_metrics_new();
    assert_non_null(f->metrics);
    assert_int_equal(nng_pub0_open(&f->pub), 0);
    assert_int_equal(nng_socket_set_int(f->pub, NNG_OPT_SENDBUF, 256), 0);
    pc_err err;
    assert_int_equal(
        pc_nng_listen_bound(f->pub, "tcp://127.0.0.1:0", NULL, f->url, sizeof(f->url), &err),
        PC_OK);
    char *urls[] = {f->url};
    pc_strlist list = {urls, 1};
    pc_subscriber_options opt = {
        .urls = &list,
        .recvbuf = 256,
        .recv_max = 8 * MIB,
        .queue_max = 200,
        .queue_bytes = 256 * MIB,
        .metrics = f->metrics,
        .batch_cb = on_batch,
    };
    assert_int_equal(pc_subscriber_open(&f->sub, &f->loop, &opt, on_message, &f->w, &err), PC_OK);
    /* pub/sub drops what is sent before the connection exists: probe
     * until one arrives. */
    uint64_t received = 0, dropped = 0;
    int64_t deadline = pc_test_now_ms() + PC_TEST_START_TIMEOUT_MS;
    while (received == 0) {
        assert_true(pc_test_now_ms() < deadline);
        assert_int_equal(nng_send(f->pub, "probe", 5, 0), 0);
        pc_test_sleep_ms(20);
        pc_subscriber_counts(f->sub, &received, &dropped);
    }
}

/* Polls until at least bytes wait in the queue (probes, 5 bytes each,
 * cannot make up one of the messages a test counts on). */
static void wait_queued(fixture *f, size_t bytes)
{
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (pc_metrics_get(f->metrics, "popcast_agent_pubsub_queued_bytes", NULL) < bytes) {
        uint64_t received = 0, dropped = 0;
        pc_subscriber_counts(f->sub, &received, &dropped);
        assert_int_equal(dropped, 0);
        assert_true(pc_test_now_ms() < deadline);
        pc_test_sleep_ms(10);
    }
}

/* Runs the loop until *seen reaches want. */
static void run_until(fixture *f, const size_t *seen, size_t want)
{
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (*seen < want) {
        assert_true(pc_test_now_ms() < deadline);
        uv_run(&f->loop, UV_RUN_NOWAIT);
    }
}

static void close_pair(fixture *f)
{
    pc_subscriber_close(f->sub);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    nng_close(f->pub);
    pc_metrics_free(f->metrics);
}

/* 40 messages of 1 MiB queued at once: taken 4 MiB (4 messages) per
 * wake-up, in the order sent. */
static void test_large_messages_taken_4_mib_at_a_time(void **state)
{
    (void)state;
    fixture f;
    open_pair(&f);
    uint8_t *big = calloc(1, MIB);
    assert_non_null(big);
    for (uint32_t i = 0; i < 40; i++) {
        memcpy(big, &i, sizeof(i));
        assert_int_equal(nng_send(f.pub, big, MIB, 0), 0);
    }
    free(big);
    wait_queued(&f, 40 * MIB);
    run_until(&f, &f.w.big_seen, 40);
    print_message("%zu wake-ups; the largest took %zu messages, %zu bytes\n", f.w.calls,
                  f.w.most_messages, f.w.most_bytes);
    assert_int_equal(f.w.big_seen, 40);
    assert_false(f.w.out_of_order);
    /* Probes (5 bytes) may be taken with the first of them. */
    assert_true(f.w.most_bytes >= 4 * MIB && f.w.most_bytes <= 4 * MIB + 5 * 64);
    assert_true(f.w.calls >= 10);
    close_pair(&f);
}

/* Messages each over the 4 MiB bound: still taken, one per wake-up. */
static void test_a_message_over_the_bound_is_taken_alone(void **state)
{
    (void)state;
    fixture f;
    open_pair(&f);
    size_t size = 5 * MIB;
    uint8_t *huge = calloc(1, size);
    assert_non_null(huge);
    for (uint32_t i = 0; i < 3; i++) {
        memcpy(huge, &i, sizeof(i));
        assert_int_equal(nng_send(f.pub, huge, size, 0), 0);
    }
    free(huge);
    wait_queued(&f, 3 * size);
    run_until(&f, &f.w.big_seen, 3);
    print_message("%zu wake-ups; the largest took %zu messages, %zu bytes\n", f.w.calls,
                  f.w.most_messages, f.w.most_bytes);
    assert_false(f.w.out_of_order);
    assert_true(f.w.calls >= 3);
    /* Probes (5 bytes) may be taken with the first of them. */
    assert_true(f.w.most_bytes >= size && f.w.most_bytes <= size + 5 * 64);
    close_pair(&f);
}

/* 150 messages of 1000 bytes queued at once: taken 64 per wake-up. */
static void test_small_messages_taken_64_at_a_time(void **state)
{
    (void)state;
    fixture f;
    open_pair(&f);
    char small[SMALL] = {0};
    for (int i = 0; i < 150; i++)
        assert_int_equal(nng_send(f.pub, small, sizeof(small), 0), 0);
    wait_queued(&f, 150 * SMALL);
    run_until(&f, &f.w.small_seen, 150);
    assert_int_equal(f.w.most_messages, 64);
    assert_true(f.w.calls >= 3);
    close_pair(&f);
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_large_messages_taken_4_mib_at_a_time),
        cmocka_unit_test(test_a_message_over_the_bound_is_taken_alone),
        cmocka_unit_test(test_small_messages_taken_64_at_a_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
