/* metrics.c - counters and gauges (see metrics.h). */
#include "metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "strmap.h"
#include "checks.h"

enum { KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM };

/* Upper bounds of the latency buckets, in microseconds (1 ms .. 60 s);
 * a last, implicit bucket counts what is above (+Inf). */
static const uint64_t latency_bounds_us[] = {
    1000,   2500,    5000,    10000,   25000,    50000,    100000,   250000,
    500000, 1000000, 2500000, 5000000, 10000000, 30000000, 60000000,
};
#define N_BOUNDS (sizeof(latency_bounds_us) / sizeof(latency_bounds_us[0]))

struct pc_histogram {
    _Atomic uint64_t buckets[N_BOUNDS + 1]; /* not cumulative; the last is +Inf */
    _Atomic uint64_t sum_us;
};

typedef struct entry {
    pc_metric metric;
    pc_histogram *hist; /* histograms only */
    char *name;
    char *labels; /* "" when none */
    struct entry *next;
} entry;

/* All series of one name: found by hash, not by scanning the list (agents
 * with thousands of tenants have thousands of series per name). Its help
 * and type are the family's: the first series created with a help gives
 * it. */
typedef struct family {
    pc_strmap *series; /* labels -> entry */
    entry *last;       /* its last series in the list: new ones go after it */
    const char *help;
    int kind;
} family;

struct pc_metrics {
    pc_mutex lock;
    entry *head, *tail;  /* insertion order keeps a name's series together */
    pc_strmap *families; /* name -> family */
};

pc_metrics *pc_metrics_new(void)
{
    pc_metrics *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    if ((m->families = pc_strmap_new()) == NULL) {
        free(m);
        return NULL;
    }
    pc_mutex_init(&m->lock);
    return m;
}

void pc_metrics_free(pc_metrics *m)
{
    if (m == NULL)
        return;
    entry *e = m->head;
    while (e != NULL) {
        entry *next = e->next;
        free(e->hist);
        free(e->name);
        free(e->labels);
        free(e);
        e = next;
    }
    size_t pos = 0;
    void *f;
    while (pc_strmap_next(m->families, &pos, NULL, &f)) {
        pc_strmap_free(((family *)f)->series);
        free(f);
    }
    pc_strmap_free(m->families);
    pc_mutex_destroy(&m->lock);
    free(m);
}

static entry *find_locked(pc_metrics *m, const char *name, const char *labels)
{
    PC_CHECK_HELD(&m->lock);
    family *f = pc_strmap_get(m->families, name);
    return f != NULL ? pc_strmap_get(f->series, labels) : NULL;
}

/* The family of name, created empty if new; NULL when out of memory. */
static family *family_locked(pc_metrics *m, const char *name)
{
    PC_CHECK_HELD(&m->lock);
    family *f = pc_strmap_get(m->families, name);
    if (f != NULL)
        return f;
    if ((f = calloc(1, sizeof(*f))) == NULL)
        return NULL;
    if ((f->series = pc_strmap_new()) == NULL || pc_strmap_put(m->families, name, f) != PC_OK) {
        pc_strmap_free(f->series);
        free(f);
        return NULL;
    }
    return f;
}

static entry *lookup(pc_metrics *m, const char *name, const char *labels, const char *help,
                     int kind)
{
    if (m == NULL)
        return NULL;
    if (labels == NULL)
        labels = "";
    pc_mutex_lock(&m->lock);
    family *f = family_locked(m, name);
    if (f != NULL && pc_strmap_count(f->series) == 0)
        f->kind = kind; /* a name has one type: its first series' */
    if (f != NULL && f->help == NULL)
        f->help = help;
    entry *e = f != NULL ? pc_strmap_get(f->series, labels) : NULL;
    if (f != NULL && e == NULL && (e = calloc(1, sizeof(*e))) != NULL) {
        e->name = strdup(name);
        e->labels = strdup(labels);
        if (kind == KIND_HISTOGRAM)
            e->hist = calloc(1, sizeof(*e->hist));
        if (e->name == NULL || e->labels == NULL || (kind == KIND_HISTOGRAM && e->hist == NULL) ||
            pc_strmap_put(f->series, labels, e) != PC_OK) {
            free(e->hist);
            free(e->name);
            free(e->labels);
            free(e);
            e = NULL;
        } else {
            /* Insert after the last series of the same name. */
            entry *after = f->last;
            f->last = e;
            if (after == NULL) {
                if (m->tail)
                    m->tail->next = e;
                else
                    m->head = e;
                m->tail = e;
            } else {
                e->next = after->next;
                after->next = e;
                if (m->tail == after)
                    m->tail = e;
            }
        }
    }
    pc_mutex_unlock(&m->lock);
    return e;
}

pc_metric *pc_metrics_counter(pc_metrics *m, const char *name, const char *labels, const char *help)
{
    entry *e = lookup(m, name, labels, help, KIND_COUNTER);
    return e != NULL ? &e->metric : NULL;
}

pc_metric *pc_metrics_gauge(pc_metrics *m, const char *name, const char *labels, const char *help)
{
    entry *e = lookup(m, name, labels, help, KIND_GAUGE);
    return e != NULL ? &e->metric : NULL;
}

pc_histogram *pc_metrics_latency(pc_metrics *m, const char *name, const char *labels,
                                 const char *help)
{
    entry *e = lookup(m, name, labels, help, KIND_HISTOGRAM);
    return e != NULL ? e->hist : NULL;
}

void pc_histogram_observe_us(pc_histogram *h, uint64_t us)
{
    if (h == NULL)
        return;
    size_t i = 0;
    while (i < N_BOUNDS && us > latency_bounds_us[i])
        i++;
    atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, us, memory_order_relaxed);
}

void pc_metrics_describe(pc_metrics *m, const char *name, const char *help)
{
    if (m == NULL)
        return;
    pc_mutex_lock(&m->lock);
    family *f = family_locked(m, name);
    if (f != NULL && f->help == NULL)
        f->help = help;
    pc_mutex_unlock(&m->lock);
}

void pc_metrics_inc(pc_metrics *m, const char *name, const char *labels)
{
    entry *e = lookup(m, name, labels, NULL, KIND_COUNTER);
    if (e != NULL)
        pc_metric_add(&e->metric, 1);
}

uint64_t pc_metrics_get(pc_metrics *m, const char *name, const char *labels)
{
    if (m == NULL)
        return 0;
    pc_mutex_lock(&m->lock);
    entry *e = find_locked(m, name, labels ? labels : "");
    uint64_t v = e ? atomic_load(&e->metric.value) : 0;
    pc_mutex_unlock(&m->lock);
    return v;
}

static const char *kind_name(int kind)
{
    return kind == KIND_GAUGE ? "gauge" : kind == KIND_HISTOGRAM ? "histogram" : "counter";
}

/* name_bucket{labels,le="..."} lines, then _sum and _count. The count is
 * the buckets' sum, so that the lines agree with each other however the
 * observations interleave with the rendering. */
static void render_histogram(FILE *f, const entry *e)
{
    const char *sep = e->labels[0] ? "," : "";
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= N_BOUNDS; i++) {
        cumulative += atomic_load(&e->hist->buckets[i]);
        if (i < N_BOUNDS)
            fprintf(f, "%s_bucket{%s%sle=\"%g\"} %llu\n", e->name, e->labels, sep,
                    (double)latency_bounds_us[i] / 1e6, (unsigned long long)cumulative);
        else
            fprintf(f, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", e->name, e->labels, sep,
                    (unsigned long long)cumulative);
    }
    const char *open = e->labels[0] ? "{" : "", *close = e->labels[0] ? "}" : "";
    fprintf(f, "%s_sum%s%s%s %.6f\n", e->name, open, e->labels, close,
            (double)atomic_load(&e->hist->sum_us) / 1e6);
    fprintf(f, "%s_count%s%s%s %llu\n", e->name, open, e->labels, close,
            (unsigned long long)cumulative);
}

char *pc_metrics_render_text(pc_metrics *m)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f == NULL)
        return NULL;
    pc_mutex_lock(&m->lock);
    const char *last = NULL;
    const family *fam = NULL;
    for (entry *e = m->head; e != NULL; e = e->next) {
        if (last == NULL || strcmp(last, e->name) != 0) {
            fam = pc_strmap_get(m->families, e->name);
            if (fam->help)
                fprintf(f, "# HELP %s %s\n", e->name, fam->help);
            fprintf(f, "# TYPE %s %s\n", e->name, kind_name(fam->kind));
            last = e->name;
        }
        if (e->hist != NULL)
            render_histogram(f, e);
        else
            fprintf(f, "%s%s%s%s %llu\n", e->name, e->labels[0] ? "{" : "", e->labels,
                    e->labels[0] ? "}" : "", (unsigned long long)atomic_load(&e->metric.value));
    }
    /* Described families with no series yet: their help and type. */
    size_t pos = 0;
    const char *name;
    void *v;
    while (pc_strmap_next(m->families, &pos, &name, &v)) {
        const family *empty = v;
        if (pc_strmap_count(empty->series) > 0)
            continue;
        if (empty->help)
            fprintf(f, "# HELP %s %s\n", name, empty->help);
        fprintf(f, "# TYPE %s %s\n", name, kind_name(empty->kind));
    }
    pc_mutex_unlock(&m->lock);
    fclose(f);
    return buf;
}

json_t *pc_metrics_render_json(pc_metrics *m)
{
    json_t *obj = json_object();
    if (obj == NULL)
        return NULL;
    pc_mutex_lock(&m->lock);
    for (entry *e = m->head; e != NULL; e = e->next) {
        const char *open = e->labels[0] ? "{" : "", *close = e->labels[0] ? "}" : "";
        char key[512];
        if (e->hist != NULL) {
            uint64_t count = 0;
            for (size_t i = 0; i <= N_BOUNDS; i++)
                count += atomic_load(&e->hist->buckets[i]);
            snprintf(key, sizeof(key), "%s_count%s%s%s", e->name, open, e->labels, close);
            json_object_set_new(obj, key, json_integer((json_int_t)count));
            snprintf(key, sizeof(key), "%s_sum%s%s%s", e->name, open, e->labels, close);
            json_object_set_new(obj, key, json_real((double)atomic_load(&e->hist->sum_us) / 1e6));
            continue;
        }
        snprintf(key, sizeof(key), "%s%s%s%s", e->name, open, e->labels, close);
        json_object_set_new(obj, key, json_integer((json_int_t)atomic_load(&e->metric.value)));
    }
    pc_mutex_unlock(&m->lock);
    return obj;
}
