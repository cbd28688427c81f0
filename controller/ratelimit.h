/* ratelimit.h - token buckets per key (per API token): each key may take
 * `burst` actions at once and then `rate` per second. The table is bounded
 * (max_keys); when it is full the oldest-used bucket is dropped, which can
 * only make a limit more lenient, never block a key that is within it.
 * Thread safe. */
#ifndef PC_RATELIMIT_H
#define PC_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pc_ratelimit pc_ratelimit;

/* rate 0: unlimited. Returns NULL when out of memory. */
pc_ratelimit *pc_ratelimit_new(double rate_per_s, double burst, size_t max_keys);
void pc_ratelimit_free(pc_ratelimit *r);

/* Takes one action for key at now_ms (monotonic). false: refused, and
 * *retry_after_ms says when one will be available. */
bool pc_ratelimit_take(pc_ratelimit *r, const char *key, int64_t now_ms, int64_t *retry_after_ms);
/* Takes n actions at once (all or none); more than the burst never
 * succeeds. */
bool pc_ratelimit_take_n(pc_ratelimit *r, const char *key, double n, int64_t now_ms,
                         int64_t *retry_after_ms);
/* The burst, 0 when unlimited. */
double pc_ratelimit_burst(const pc_ratelimit *r);

#endif
