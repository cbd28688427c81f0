/* clock.h - the one place that reads the clocks.
 *
 * Monotonic time (pc_mono_*) is for ages, timeouts and deadlines inside a
 * process: it never jumps when the wall clock is set. Wall time
 * (pc_wall_ms, Unix milliseconds) is only for times that leave the process
 * or are compared with another machine's (manifests, heartbeats, status
 * reports, log lines).
 *
 * Condition variables created with default attributes wait on
 * CLOCK_REALTIME: pc_deadline_after_ms builds their absolute deadline.
 *
 * Every function is thread safe and cannot fail (the clocks exist on every
 * system popcast runs on). */
#ifndef PC_CLOCK_H
#define PC_CLOCK_H

#include <stdint.h>
#include <time.h>

/* CLOCK_MONOTONIC in nanoseconds (for short, fine-grained budgets). */
static inline int64_t pc_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* CLOCK_MONOTONIC in whole milliseconds. */
static inline int64_t pc_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* CLOCK_MONOTONIC in milliseconds with the fraction, for measurements
 * (bench/). */
static inline double pc_mono_ms_frac(void)
{
    return (double)pc_mono_ns() / 1e6;
}

/* CLOCK_REALTIME in whole milliseconds since the Unix epoch. */
static inline int64_t pc_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* *deadline = now (CLOCK_REALTIME) + ms, for pthread_cond_timedwait on a
 * condition variable with default attributes. */
static inline void pc_deadline_after_ms(struct timespec *deadline, uint64_t ms)
{
    clock_gettime(CLOCK_REALTIME, deadline);
    deadline->tv_sec += (time_t)(ms / 1000);
    deadline->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (deadline->tv_nsec >= 1000000000L) {
        deadline->tv_sec++;
        deadline->tv_nsec -= 1000000000L;
    }
}

#endif
