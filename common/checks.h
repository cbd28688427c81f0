/* checks.h - debug checks of popcast's own rules: which thread may call a
 * function, which lock must be held. Headers state these rules in words
 * ("loop thread only", "with the lock held"); these checks make a broken
 * rule fail loudly in tests instead of racing silently in production.
 *
 * The checks exist when POPCAST_DEBUG_CHECKS is defined (CMake option
 * POPCAST_DEBUG_CHECKS; the sanitizer build of the test suite turns it on,
 * so every test runs with them). Otherwise they compile to nothing and the
 * owner and lock records below are never read. A failed check is a bug in
 * popcast, never bad input: it prints where and aborts, as assert does.
 * (Input is never checked with these.) */
#ifndef PC_CHECKS_H
#define PC_CHECKS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

/* The thread that owns something (an event loop and what runs on it). */
typedef struct pc_thread_owner {
    pthread_t thread;
    atomic_bool set;
} pc_thread_owner;

/* The calling thread owns o from now on. */
void pc_thread_own(pc_thread_owner *o);
/* True when o has no owner yet or the calling thread is its owner. */
bool pc_thread_is_owner(const pc_thread_owner *o);

/* A mutex that knows its holder, for "called with the lock held". */
typedef struct pc_mutex {
    pthread_mutex_t m;
    pthread_t holder;
    atomic_bool held;
} pc_mutex;

void pc_mutex_init(pc_mutex *l);
void pc_mutex_destroy(pc_mutex *l);
void pc_mutex_lock(pc_mutex *l);
void pc_mutex_unlock(pc_mutex *l);
/* True when the calling thread holds l. */
bool pc_mutex_held(const pc_mutex *l);

__attribute__((noreturn)) void pc_check_failed(const char *file, int line, const char *what);

#ifdef POPCAST_DEBUG_CHECKS
#define PC_CHECK(cond)                                                                             \
    do {                                                                                           \
        if (!(cond))                                                                               \
            pc_check_failed(__FILE__, __LINE__, #cond);                                            \
    } while (0)
#else
#define PC_CHECK(cond) ((void)0)
#endif

/* The calling thread must own o. */
#define PC_CHECK_OWNER(o) PC_CHECK(pc_thread_is_owner(o))
/* The calling thread must hold l. */
#define PC_CHECK_HELD(l) PC_CHECK(pc_mutex_held(l))

#endif
