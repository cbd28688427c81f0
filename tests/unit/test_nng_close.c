/* test_nng_close.c - a socket close that does not return is abandoned
 * after the bound (common/nng_close.h), and a normal one is not.
 *
 * nng 1.5.2's rare hang cannot be provoked on demand, so the test makes a
 * close wait on purpose, the way nng itself does: a socket's close waits
 * until its pipes are gone, and a pipe goes only after its removal
 * callback returned. The callback here blocks until the test releases it. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>
#include <nng/nng.h>
#include <nng/protocol/pair0/pair.h>

#include "clock.h"
#include "nng_close.h"

static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static bool gate_open, callback_done;

static void blocking_removal(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    (void)p;
    (void)ev;
    (void)arg;
    pthread_mutex_lock(&gate_lock);
    while (!gate_open)
        pthread_cond_wait(&gate_cond, &gate_lock);
    callback_done = true;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_lock);
}

/* A connected pair over inproc; *a's pipe removal runs cb (if any). */
static void pair(nng_socket *a, nng_socket *b, const char *url, nng_pipe_cb cb)
{
    assert_int_equal(nng_pair0_open(a), 0);
    assert_int_equal(nng_pair0_open(b), 0);
    if (cb != NULL)
        assert_int_equal(nng_pipe_notify(*a, NNG_PIPE_EV_REM_POST, cb, NULL), 0);
    assert_int_equal(nng_listen(*b, url, NULL, 0), 0);
    assert_int_equal(nng_dial(*a, url, NULL, 0), 0);
    /* Connected once a message goes through. */
    assert_int_equal(nng_send(*a, "x", 1, 0), 0);
    char buf[8];
    size_t len = sizeof(buf);
    assert_int_equal(nng_recv(*b, buf, &len, 0), 0);
}

static void test_normal_close_is_not_abandoned(void **state)
{
    (void)state;
    nng_socket a, b;
    pair(&a, &b, "inproc://nng_close_normal", NULL);
    assert_true(pc_nng_close_bounded(a, 5000, "test socket a"));
    assert_true(pc_nng_close_bounded(b, 5000, "test socket b"));
    assert_false(pc_nng_abandoned());
}

static void test_stuck_close_is_abandoned_in_time(void **state)
{
    (void)state;
    nng_socket a, b;
    pair(&a, &b, "inproc://nng_close_stuck", blocking_removal);
    int64_t t0 = pc_mono_ms();
    assert_false(pc_nng_close_bounded(a, 200, "test socket a"));
    int64_t took = pc_mono_ms() - t0;
    assert_true(took >= 200);
    assert_true(pc_nng_abandoned());
    /* The close goes on in its own thread and ends once nng can. */
    pthread_mutex_lock(&gate_lock);
    gate_open = true;
    pthread_cond_broadcast(&gate_cond);
    while (!callback_done)
        pthread_cond_wait(&gate_cond, &gate_lock);
    pthread_mutex_unlock(&gate_lock);
    assert_true(pc_nng_close_bounded(b, 5000, "test socket b"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_normal_close_is_not_abandoned),
        cmocka_unit_test(test_stuck_close_is_abandoned_in_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
