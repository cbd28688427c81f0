/* metrics.c - counters and gauges (see metrics.h). */
#include "metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "strmap.h"
#include "checks.h"

typedef struct entry {
    pc_metric metric;
    char *name;
    char *labels; /* "" when none */
    const char *help;
    int is_gauge;
    struct entry *next;
} entry;

/* All series of one name: found by hash, not by scanning the list (agents
 * with thousands of tenants have thousands of series per name). */
typedef struct family {
    pc_strmap *series; /* labels -> entry */
    entry *last;       /* its last series in the list: new ones go after it */
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

static pc_metric *lookup(pc_metrics *m, const char *name, const char *labels, const char *help,
                         int is_gauge)
{
    if (m == NULL)
        return NULL;
    if (labels == NULL)
        labels = "";
    pc_mutex_lock(&m->lock);
    family *f = family_locked(m, name);
    entry *e = f != NULL ? pc_strmap_get(f->series, labels) : NULL;
    if (f != NULL && e == NULL && (e = calloc(1, sizeof(*e))) != NULL) {
        e->name = strdup(name);
        e->labels = strdup(labels);
        e->help = help;
        e->is_gauge = is_gauge;
        if (e->name == NULL || e->labels == NULL || pc_strmap_put(f->series, labels, e) != PC_OK) {
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
    return e ? &e->metric : NULL;
}

pc_metric *pc_metrics_counter(pc_metrics *m, const char *name, const char *labels, const char *help)
{
    return lookup(m, name, labels, help, 0);
}

pc_metric *pc_metrics_gauge(pc_metrics *m, const char *name, const char *labels, const char *help)
{
    return lookup(m, name, labels, help, 1);
}

void pc_metrics_inc(pc_metrics *m, const char *name, const char *labels)
{
    pc_metric_add(lookup(m, name, labels, NULL, 0), 1);
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

char *pc_metrics_render_text(pc_metrics *m)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f == NULL)
        return NULL;
    pc_mutex_lock(&m->lock);
    const char *last = NULL;
    for (entry *e = m->head; e != NULL; e = e->next) {
        if (last == NULL || strcmp(last, e->name) != 0) {
            if (e->help)
                fprintf(f, "# HELP %s %s\n", e->name, e->help);
            fprintf(f, "# TYPE %s %s\n", e->name, e->is_gauge ? "gauge" : "counter");
            last = e->name;
        }
        fprintf(f, "%s%s%s%s %llu\n", e->name, e->labels[0] ? "{" : "", e->labels,
                e->labels[0] ? "}" : "", (unsigned long long)atomic_load(&e->metric.value));
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
        char key[512];
        snprintf(key, sizeof(key), "%s%s%s%s", e->name, e->labels[0] ? "{" : "", e->labels,
                 e->labels[0] ? "}" : "");
        json_object_set_new(obj, key, json_integer((json_int_t)atomic_load(&e->metric.value)));
    }
    pc_mutex_unlock(&m->lock);
    return obj;
}
