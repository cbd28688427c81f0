/* ratelimit.c - token buckets (see ratelimit.h). */
#include "ratelimit.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "strmap.h"

typedef struct bucket {
    char *key;
    double tokens;
    int64_t updated_ms;
} bucket;

struct pc_ratelimit {
    double rate, burst;
    pthread_mutex_t lock;
    bucket *buckets;
    size_t n, cap;
    pc_strmap *by_key; /* key -> its bucket in buckets */
};

pc_ratelimit *pc_ratelimit_new(double rate_per_s, double burst, size_t max_keys)
{
    pc_ratelimit *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->rate = rate_per_s;
    r->burst = burst < 1 ? 1 : burst;
    r->cap = max_keys ? max_keys : 1;
    r->buckets = calloc(r->cap, sizeof(*r->buckets));
    r->by_key = pc_strmap_new();
    if (r->buckets == NULL || r->by_key == NULL) {
        free(r->buckets);
        pc_strmap_free(r->by_key);
        free(r);
        return NULL;
    }
    pthread_mutex_init(&r->lock, NULL);
    return r;
}

void pc_ratelimit_free(pc_ratelimit *r)
{
    if (r == NULL)
        return;
    pthread_mutex_destroy(&r->lock);
    for (size_t i = 0; i < r->n; i++)
        free(r->buckets[i].key);
    free(r->buckets);
    pc_strmap_free(r->by_key);
    free(r);
}

bool pc_ratelimit_take_n(pc_ratelimit *r, const char *key, double n, int64_t now_ms,
                         int64_t *retry_after_ms)
{
    *retry_after_ms = 0;
    if (r == NULL || r->rate <= 0)
        return true;
    pthread_mutex_lock(&r->lock);
    bucket *b = pc_strmap_get(r->by_key, key);
    if (b == NULL) {
        bool full = r->n == r->cap;
        if (!full) {
            b = &r->buckets[r->n];
        } else {
            /* Full: reuse the bucket used longest ago. */
            b = &r->buckets[0];
            for (size_t i = 1; i < r->n; i++)
                if (r->buckets[i].updated_ms < b->updated_ms)
                    b = &r->buckets[i];
        }
        char *copy = strdup(key);
        if (copy == NULL || pc_strmap_put(r->by_key, key, b) != PC_OK) {
            /* Out of memory: let the action through (a limit may only
             * ever be more lenient than configured, never block). */
            free(copy);
            pthread_mutex_unlock(&r->lock);
            return true;
        }
        if (full) {
            pc_strmap_remove(r->by_key, b->key);
            free(b->key);
        } else {
            r->n++;
        }
        b->key = copy;
        b->tokens = r->burst;
        b->updated_ms = now_ms;
    }
    if (now_ms > b->updated_ms) {
        b->tokens += (double)(now_ms - b->updated_ms) * r->rate / 1000.0;
        if (b->tokens > r->burst)
            b->tokens = r->burst;
        b->updated_ms = now_ms;
    }
    bool ok = b->tokens >= n;
    if (ok)
        b->tokens -= n;
    else
        *retry_after_ms = (int64_t)((n - b->tokens) * 1000.0 / r->rate) + 1;
    pthread_mutex_unlock(&r->lock);
    return ok;
}

bool pc_ratelimit_take(pc_ratelimit *r, const char *key, int64_t now_ms, int64_t *retry_after_ms)
{
    return pc_ratelimit_take_n(r, key, 1.0, now_ms, retry_after_ms);
}

double pc_ratelimit_burst(const pc_ratelimit *r)
{
    return r == NULL || r->rate <= 0 ? 0.0 : r->burst;
}
