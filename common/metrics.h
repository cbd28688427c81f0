/* metrics.h - named counters, gauges and latency histograms, rendered as
 * Prometheus text or JSON.
 *
 * A metric is a name plus an optional label set written the Prometheus way
 * (`reason="bad_signature"`). Looking one up takes a mutex; updating one is
 * a single atomic add, so hot paths look a metric up once and keep the
 * pointer (metrics are never freed before the registry).
 *
 * A name's series share its help and type, given by the first series
 * created under it with a help. Every series popcast exports is created at
 * start with its help (docs/operations.md "Metrics"), so a scrape sees
 * every counter, at 0, before its first increment. */
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

/* A latency histogram, in seconds: buckets from 1 ms to 60 s (and +Inf),
 * rendered as name_bucket{le}, name_sum and name_count (JSON: name_count
 * and name_sum). NULL only when out of memory; observing NULL does
 * nothing. */
typedef struct pc_histogram pc_histogram;
pc_histogram *pc_metrics_latency(pc_metrics *m, const char *name, const char *labels,
                                 const char *help);
void pc_histogram_observe_us(pc_histogram *h, uint64_t us);

/* Gives counter family name its help before it has any series: one whose
 * labels are known only when counted (a reason, an error name). Rendered
 * as HELP and TYPE lines until then. */
void pc_metrics_describe(pc_metrics *m, const char *name, const char *help);

/* Shorthand: look up and add 1. */
void pc_metrics_inc(pc_metrics *m, const char *name, const char *labels);
/* Current value, 0 if the metric does not exist. */
uint64_t pc_metrics_get(pc_metrics *m, const char *name, const char *labels);

/* Prometheus text exposition format, malloc'd. */
char *pc_metrics_render_text(pc_metrics *m);
/* {"name{labels}": value, ...} */
json_t *pc_metrics_render_json(pc_metrics *m);

#endif
