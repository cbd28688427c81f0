/* ticker.c - a periodic thread (see ticker.h). */
#include "ticker.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "clock.h"

struct pc_ticker {
    pthread_mutex_t lock; /* guards stopping */
    pthread_cond_t wake;  /* pc_deadline_after_ms's clock */
    bool stopping;
    uint64_t interval_ms;
    void (*fn)(void *arg);
    void *arg;
    pthread_t thread;
};

static void *ticker_main(void *p)
{
    pc_ticker *t = p;
    pthread_mutex_lock(&t->lock);
    while (!t->stopping) {
        struct timespec deadline;
        pc_deadline_after_ms(&deadline, t->interval_ms);
        /* A spurious wake only runs fn early. */
        pthread_cond_timedwait(&t->wake, &t->lock, &deadline);
        if (t->stopping)
            break;
        pthread_mutex_unlock(&t->lock);
        t->fn(t->arg);
        pthread_mutex_lock(&t->lock);
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

int pc_ticker_start(pc_ticker **out, uint64_t interval_ms, void (*fn)(void *arg), void *arg,
                    pc_err *err)
{
    *out = NULL;
    if (interval_ms == 0 || fn == NULL)
        return pc_err_set(err, PC_E_INVALID, "ticker: a zero interval or no function");
    pc_ticker *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    t->interval_ms = interval_ms;
    t->fn = fn;
    t->arg = arg;
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->wake, NULL);
    if (pthread_create(&t->thread, NULL, ticker_main, t) != 0) {
        pthread_cond_destroy(&t->wake);
        pthread_mutex_destroy(&t->lock);
        free(t);
        return pc_err_set(err, PC_E_NOMEM, "cannot start a ticker thread");
    }
    *out = t;
    return PC_OK;
}

void pc_ticker_stop(pc_ticker *t)
{
    if (t == NULL)
        return;
    pthread_mutex_lock(&t->lock);
    t->stopping = true;
    pthread_cond_signal(&t->wake);
    pthread_mutex_unlock(&t->lock);
    pthread_join(t->thread, NULL);
    pthread_cond_destroy(&t->wake);
    pthread_mutex_destroy(&t->lock);
    free(t);
}
