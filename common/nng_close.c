/* nng_close.c - closing an nng socket within a bounded time (see
 * nng_close.h). */
#include "nng_close.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "clock.h"
#include "log.h"

/* Shared by the caller and the closing thread; the last one frees it. */
typedef struct closer {
    nng_socket sock;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    int refs;
} closer;

static atomic_bool abandoned;

static void closer_release(closer *c)
{
    pthread_mutex_lock(&c->lock);
    int left = --c->refs;
    pthread_mutex_unlock(&c->lock);
    if (left == 0) {
        pthread_cond_destroy(&c->cond);
        pthread_mutex_destroy(&c->lock);
        free(c);
    }
}

static void *close_main(void *arg)
{
    closer *c = arg;
    nng_close(c->sock);
    pthread_mutex_lock(&c->lock);
    c->done = true;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
    closer_release(c);
    return NULL;
}

bool pc_nng_close_bounded(nng_socket sock, uint64_t timeout_ms, const char *what)
{
    /* Once one close hung, nng's close is wedged for the whole process
     * (the later closes of the same stop hung behind it, one full wait
     * each, past the test's bound): the rest wait a little only. */
    if (atomic_load(&abandoned) && timeout_ms > PC_NNG_CLOSE_AFTER_HANG_MS)
        timeout_ms = PC_NNG_CLOSE_AFTER_HANG_MS;
    closer *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        nng_close(sock); /* no memory for a thread either: unbounded */
        return true;
    }
    c->sock = sock;
    c->refs = 2;
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    pthread_t thread;
    if (pthread_create(&thread, NULL, close_main, c) != 0) {
        pthread_cond_destroy(&c->cond);
        pthread_mutex_destroy(&c->lock);
        free(c);
        nng_close(sock);
        return true;
    }
    pthread_detach(thread);
    struct timespec deadline;
    pc_deadline_after_ms(&deadline, timeout_ms);
    pthread_mutex_lock(&c->lock);
    while (!c->done && pthread_cond_timedwait(&c->cond, &c->lock, &deadline) == 0)
        ;
    bool done = c->done;
    pthread_mutex_unlock(&c->lock);
    closer_release(c);
    if (!done) {
        atomic_store(&abandoned, true);
        pc_warn("nng",
                "%s: nng_close did not return within %llu ms (a known nng 1.5.2 hang): the stop "
                "goes on without it",
                what, (unsigned long long)timeout_ms);
    }
    return done;
}

bool pc_nng_abandoned(void)
{
    return atomic_load(&abandoned);
}
