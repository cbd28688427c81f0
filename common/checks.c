/* checks.c - debug checks of thread and lock rules (see checks.h). */
#include "checks.h"

#include <stdio.h>
#include <stdlib.h>

void pc_thread_own(pc_thread_owner *o)
{
    o->thread = pthread_self();
    atomic_store(&o->set, true);
}

bool pc_thread_is_owner(const pc_thread_owner *o)
{
    return !atomic_load(&o->set) || pthread_equal(o->thread, pthread_self());
}

void pc_mutex_init(pc_mutex *l)
{
    pthread_mutex_init(&l->m, NULL);
    atomic_store(&l->held, false);
}

void pc_mutex_destroy(pc_mutex *l)
{
    pthread_mutex_destroy(&l->m);
}

void pc_mutex_lock(pc_mutex *l)
{
    pthread_mutex_lock(&l->m);
    l->holder = pthread_self();
    atomic_store(&l->held, true);
}

void pc_mutex_unlock(pc_mutex *l)
{
    atomic_store(&l->held, false);
    pthread_mutex_unlock(&l->m);
}

bool pc_mutex_held(const pc_mutex *l)
{
    /* holder is only written by the thread that just took the lock, and
     * read here by a thread asking whether it is that thread: if it holds
     * the lock, it wrote holder itself. */
    return atomic_load(&l->held) && pthread_equal(l->holder, pthread_self());
}

void pc_check_failed(const char *file, int line, const char *what)
{
    fprintf(stderr, "popcast: internal check failed at %s:%d: %s\n", file, line, what);
    fflush(stderr);
    abort();
}
