/* metrics.h - named counters and gauges, rendered as Prometheus text or
 * JSON.
 *
 * A metric is a name plus an optional label set written the Prometheus way
 * (`reason="bad_signature"`). Looking one up takes a mutex; updating one is
 * a single atomic add, so hot paths look a metric up once and keep the
 * pointer (metrics are never freed before the registry). */
#ifndef PC_METRICS_H
#define PC_METRICS_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdint.h>

typedef struct pc_metrics pc_metrics;

typedef struct pc_metric {
    _Atomic uint64_t value;
} pc_metric;

pc_metrics *pc_metrics_new(void);
void pc_metrics_free(pc_metrics *m);

/* Returns the counter name{labels}, creating it at 0. labels may be NULL.
 * Returns NULL only when out of memory; the update helpers accept NULL. */
pc_metric *pc_metrics_counter(pc_metrics *m, const char *name, const char *labels,
                              const char *help);
pc_metric *pc_metrics_gauge(pc_metrics *m, const char *name, const char *labels, const char *help);

static inline void pc_metric_add(pc_metric *c, uint64_t n)
{
    if (c != NULL)
        atomic_fetch_add_explicit(&c->value, n, memory_order_relaxed);
}
static inline void pc_metric_set(pc_metric *c, uint64_t v)
{
    if (c != NULL)
        atomic_store_explicit(&c->value, v, memory_order_relaxed);
}

/* Shorthand: look up and add 1. */
void pc_metrics_inc(pc_metrics *m, const char *name, const char *labels);
/* Current value, 0 if the metric does not exist. */
uint64_t pc_metrics_get(pc_metrics *m, const char *name, const char *labels);

/* Prometheus text exposition format, malloc'd. */
char *pc_metrics_render_text(pc_metrics *m);
/* {"name{labels}": value, ...} */
json_t *pc_metrics_render_json(pc_metrics *m);

#endif
