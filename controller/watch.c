/* watch.c - the API's event stream (see watch.h). */
#include "watch.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "envelope.h"
#include "log.h"

#define DEFAULT_MAX_QUEUED   (1u << 20)
#define DEFAULT_MAX_WATCHERS 1024
#define DEFAULT_KEEPALIVE_MS 15000
#define DEFAULT_WRITE_MS     30000
/* Entries read from the store per write: a watcher far behind catches up
 * in writes of this many, one after the other. */
#define ENTRIES_PER_WRITE 64

typedef struct queued {
    struct queued *next;
    size_t len;
    char text[];
} queued;

typedef struct watcher {
    struct watcher *next;
    pc_watch *hub;
    pc_httpd_stream *st;
    pc_watch_scope scope;
    bool is_tail;      /* a tail: its tenant's log lines only (scope.tenants[0]) */
    uint64_t next_seq; /* the next entry to send */
    queued *head, *tail;
    size_t queued_bytes;
    char *writing; /* the text being written (NULL: idle) */
    bool closing;  /* cut or failed: closed once no write is in flight */
    bool cut_sent;
    int64_t last_write_ms;
} watcher;

struct pc_watch {
    pc_watch_options opt;
    pthread_mutex_t lock;
    watcher *watchers;
    size_t n;
    uint64_t cut_total;
    bool stopping;
    size_t n_tails; /* tails among the watchers (0: pc_watch_tailed answers at once) */
    pc_metric *m_watchers, *m_cut;
};

int pc_watch_new(pc_watch **out, const pc_watch_options *opt, pc_err *err)
{
    pc_watch *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    w->opt = *opt;
    if (w->opt.max_queued_bytes == 0)
        w->opt.max_queued_bytes = DEFAULT_MAX_QUEUED;
    if (w->opt.max_watchers == 0)
        w->opt.max_watchers = DEFAULT_MAX_WATCHERS;
    if (w->opt.keepalive_ms == 0)
        w->opt.keepalive_ms = DEFAULT_KEEPALIVE_MS;
    if (w->opt.write_timeout_ms == 0)
        w->opt.write_timeout_ms = DEFAULT_WRITE_MS;
    pthread_mutex_init(&w->lock, NULL);
    if (opt->metrics != NULL) {
        w->m_watchers = pc_metrics_gauge(opt->metrics, "popcast_controller_watchers", NULL,
                                         "event streams (GET /v1/watch) connected now");
        w->m_cut = pc_metrics_counter(opt->metrics, "popcast_controller_watch_cut_total", NULL,
                                      "watchers cut for reading too slowly");
    }
    *out = w;
    return PC_OK;
}

char *pc_watch_format(uint64_t id, const char *type, json_t *data, size_t *len)
{
    /* JSON_COMPACT never puts a newline in the text: one data line. */
    char *json = json_dumps(data, JSON_COMPACT | JSON_ENSURE_ASCII);
    if (json == NULL)
        return NULL;
    size_t cap = strlen(json) + strlen(type) + 64;
    char *text = malloc(cap);
    if (text != NULL)
        *len = (size_t)snprintf(text, cap, "id: %llu\nevent: %s\ndata: %s\n\n",
                                (unsigned long long)id, type, json);
    free(json);
    return text;
}

static bool in_scope(const pc_watch_scope *s, const char *tenant)
{
    if (s->all)
        return true;
    for (size_t i = 0; tenant != NULL && i < s->n; i++)
        if (strcmp(s->tenants[i], tenant) == 0)
            return true;
    return false;
}

static uint64_t applied_seq(pc_watch *w)
{
    uint64_t seq = 0;
    pc_store_applied_seq(w->opt.store, &seq, NULL);
    return seq;
}

static json_t *entry_json(const Popcast__Manifest *m)
{
    json_t *o =
        json_pack("{s:I,s:s,s:s,s:I,s:I}", "seq", (json_int_t)m->seq, "tenant",
                  m->tenant ? m->tenant : "", "kind", pc_entry_kind_name(m->kind), "version",
                  (json_int_t)m->version, "created_unix_ms", (json_int_t)m->created_unix_ms);
    if (o == NULL)
        return NULL;
    if (m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_ROLLBACK)
        json_object_set_new(o, "rollback_of", json_integer((json_int_t)m->rollback_of));
    if (m->author != NULL && m->author[0] != '\0')
        json_object_set_new(o, "author", json_string(m->author));
    if (m->message != NULL && m->message[0] != '\0')
        json_object_set_new(o, "message", json_string(m->message));
    if (m->target != NULL)
        json_object_set_new(o, "targeted", json_true());
    return o;
}

/* Appends text to a growing buffer (buf, len, cap); false when out of
 * memory. */
static bool append(char **buf, size_t *len, size_t *cap, const char *text, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t want = (*len + n + 1) * 2;
        char *grown = realloc(*buf, want);
        if (grown == NULL)
            return false;
        *buf = grown;
        *cap = want;
    }
    memcpy(*buf + *len, text, n);
    *len += n;
    (*buf)[*len] = '\0';
    return true;
}

static void written(void *arg, int rv);
static void enqueue(pc_watch *w, watcher *x, const char *text, size_t len);
static void publish(pc_watch *w, const char *type, const char *tenant, json_t *data, bool to_tails);

/* The next text to write for x, or NULL when it has nothing (lock held):
 * entries it has not had, then its queued live events. A watcher whose
 * next entry the log no longer holds gets "compacted" and is closed. */
static char *next_text(pc_watch *w, watcher *x, size_t *len)
{
    char *buf = NULL;
    size_t cap = 0;
    *len = 0;
    uint64_t head = x->is_tail ? 0 : applied_seq(w);
    for (int n = 0; x->next_seq <= head && n < ENTRIES_PER_WRITE; n++) {
        Popcast__Manifest *m = NULL;
        pc_err err;
        int rc = pc_store_get_manifest(w->opt.store, x->next_seq, &m, &err);
        if (rc == PC_E_NOTFOUND) {
            json_t *o = json_pack("{s:I,s:s}", "seq", (json_int_t)x->next_seq, "message",
                                  "the log no longer holds this entry: list again, then watch "
                                  "from the seq you listed at");
            size_t n2 = 0;
            char *t = o ? pc_watch_format(x->next_seq - 1, "compacted", o, &n2) : NULL;
            json_decref(o);
            if (t != NULL && append(&buf, len, &cap, t, n2))
                x->closing = true;
            free(t);
            return buf;
        }
        if (rc != PC_OK)
            break; /* try again at the next poke */
        if (in_scope(&x->scope, m->tenant)) {
            json_t *o = entry_json(m);
            size_t n2 = 0;
            char *t = o ? pc_watch_format(m->seq, "entry", o, &n2) : NULL;
            json_decref(o);
            bool ok = t != NULL && append(&buf, len, &cap, t, n2);
            free(t);
            if (!ok) {
                popcast__manifest__free_unpacked(m, NULL);
                break;
            }
        }
        popcast__manifest__free_unpacked(m, NULL);
        x->next_seq++;
    }
    if (*len > 0)
        return buf;
    queued *q = x->head;
    if (q == NULL)
        return buf;
    x->head = q->next;
    if (x->head == NULL)
        x->tail = NULL;
    x->queued_bytes -= q->len;
    bool ok = append(&buf, len, &cap, q->text, q->len);
    free(q);
    return ok ? buf : NULL;
}

/* Starts x's next write if it is idle and has something (lock held). */
static void pump(pc_watch *w, watcher *x)
{
    if (x->writing != NULL || x->closing)
        return;
    size_t len = 0;
    char *text = next_text(w, x, &len);
    if (text == NULL || len == 0) {
        free(text);
        return;
    }
    x->writing = text;
    x->last_write_ms = pc_mono_ms();
    pc_httpd_stream_write(x->st, text, len, w->opt.write_timeout_ms, written, x);
}

static void free_watcher(watcher *x)
{
    while (x->head != NULL) {
        queued *q = x->head;
        x->head = q->next;
        free(q);
    }
    free(x->writing);
    free(x);
}

/* A write ended (an nng thread). The stream is never closed from here
 * (pc_httpd_stream_close waits for this callback): a watcher to close is
 * marked, and pc_watch_tick closes it. */
static void written(void *arg, int rv)
{
    watcher *x = arg;
    pc_watch *w = x->hub;
    pthread_mutex_lock(&w->lock);
    free(x->writing);
    x->writing = NULL;
    if (rv != 0 || w->stopping)
        x->closing = true;
    else if (x->cut_sent && x->head == NULL)
        x->closing = true; /* its "cut" is out */
    else
        pump(w, x);
    pthread_mutex_unlock(&w->lock);
}

int pc_watch_check(pc_watch *w, uint64_t from, pc_err *err)
{
    uint64_t first = 0, last = 0;
    pc_store_log_bounds(w->opt.store, &first, &last, NULL);
    if (first > 1 && from + 1 < first)
        return pc_err_set(err, PC_E_COMPACTED,
                          "the log holds entries from seq %llu on: list again, then watch from "
                          "the seq you listed at",
                          (unsigned long long)first);
    pthread_mutex_lock(&w->lock);
    bool full = w->n >= w->opt.max_watchers || w->stopping;
    pthread_mutex_unlock(&w->lock);
    if (full)
        return pc_err_set(err, PC_E_UNAVAILABLE, "%zu watchers already; retry later",
                          w->opt.max_watchers);
    return PC_OK;
}

static void add_watcher(pc_watch *w, pc_httpd_stream *st, uint64_t from,
                        const pc_watch_scope *scope, bool tail)
{
    watcher *x = calloc(1, sizeof(*x));
    if (x == NULL) {
        pc_httpd_stream_close(st);
        return;
    }
    x->hub = w;
    x->st = st;
    x->scope = *scope;
    x->is_tail = tail;
    x->next_seq = from + 1;
    x->last_write_ms = pc_mono_ms();
    pthread_mutex_lock(&w->lock);
    if (w->stopping) {
        pthread_mutex_unlock(&w->lock);
        pc_httpd_stream_close(st);
        free(x);
        return;
    }
    x->next = w->watchers;
    w->watchers = x;
    w->n++;
    w->n_tails += tail;
    pc_metric_set(w->m_watchers, w->n);
    /* A first line at once, so the client knows the stream is up even
     * when nothing happens for a while. */
    static const char hello[] = ": popcast watch\n\n";
    static const char hello_tail[] = ": popcast tail\n\n";
    const char *first = tail ? hello_tail : hello;
    size_t first_len = strlen(first);
    x->writing = strdup(first);
    if (x->writing != NULL)
        pc_httpd_stream_write(st, x->writing, first_len, w->opt.write_timeout_ms, written, x);
    pthread_mutex_unlock(&w->lock);
}

void pc_watch_add(pc_watch *w, pc_httpd_stream *st, uint64_t from, const pc_watch_scope *scope)
{
    add_watcher(w, st, from, scope, false);
}

void pc_watch_add_tail(pc_watch *w, pc_httpd_stream *st, const char *tenant)
{
    pc_watch_scope scope = {.n = 1};
    snprintf(scope.tenants[0], sizeof(scope.tenants[0]), "%s", tenant);
    add_watcher(w, st, UINT64_MAX - 1, &scope, true);
}

void pc_watch_tail_event(pc_watch *w, const char *tenant, const char *type, json_t *data)
{
    publish(w, type, tenant, data, true);
}

size_t pc_watch_tailed(pc_watch *w, char (*out)[PC_TENANT_MAX + 1], size_t max)
{
    size_t n = 0;
    if (w == NULL)
        return 0;
    pthread_mutex_lock(&w->lock);
    for (watcher *x = w->n_tails ? w->watchers : NULL; x != NULL && n < max; x = x->next) {
        if (!x->is_tail || x->closing)
            continue;
        bool seen = false;
        for (size_t i = 0; i < n && !seen; i++)
            seen = strcmp(out[i], x->scope.tenants[0]) == 0;
        if (!seen)
            snprintf(out[n++], sizeof(out[0]), "%s", x->scope.tenants[0]);
    }
    pthread_mutex_unlock(&w->lock);
    return n;
}

void pc_watch_entries_applied(pc_watch *w)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->lock);
    for (watcher *x = w->watchers; x != NULL; x = x->next)
        pump(w, x);
    pthread_mutex_unlock(&w->lock);
}

/* Queues text for x (lock held); a watcher over its bound is cut. */
static void enqueue(pc_watch *w, watcher *x, const char *text, size_t len)
{
    if (x->closing)
        return;
    /* The queue always takes one event, however large. */
    if (x->head != NULL && x->queued_bytes + len > w->opt.max_queued_bytes) {
        /* Cut: what is queued goes, a last "cut" event takes its place,
         * and the watcher is closed once that is written (or fails). */
        while (x->head != NULL) {
            queued *q = x->head;
            x->head = q->next;
            free(q);
        }
        x->tail = NULL;
        x->queued_bytes = 0;
        w->cut_total++;
        pc_metric_add(w->m_cut, 1);
        pc_warn("watch", "a watcher read too slowly (%zu bytes of events queued): cut",
                w->opt.max_queued_bytes);
        static const char cut_watch[] = "event: cut\ndata: {\"reason\":\"the watcher read too "
                                        "slowly; watch again from the last id it got\"}\n\n";
        static const char cut_tail[] = "event: cut\ndata: {\"reason\":\"the tail read too slowly; "
                                       "lines were lost: tail again\"}\n\n";
        const char *cut = x->is_tail ? cut_tail : cut_watch;
        size_t cut_len = strlen(cut);
        queued *q = malloc(sizeof(*q) + cut_len + 1);
        if (q != NULL) {
            q->next = NULL;
            q->len = cut_len;
            memcpy(q->text, cut, cut_len + 1);
            x->head = x->tail = q;
            x->queued_bytes = q->len;
        }
        x->cut_sent = true;
        return;
    }
    if (x->cut_sent)
        return;
    queued *q = malloc(sizeof(*q) + len + 1);
    if (q == NULL)
        return;
    q->next = NULL;
    q->len = len;
    memcpy(q->text, text, len + 1);
    if (x->tail != NULL)
        x->tail->next = q;
    else
        x->head = q;
    x->tail = q;
    x->queued_bytes += len;
}

/* Queues a live event for the watchers that see it: tails of tenant
 * (to_tails), or the other watchers whose scope covers tenant (NULL:
 * the watchers that see everything). Takes data. */
static void publish(pc_watch *w, const char *type, const char *tenant, json_t *data, bool to_tails)
{
    if (w == NULL || data == NULL) {
        json_decref(data);
        return;
    }
    size_t len = 0;
    char *text = pc_watch_format(applied_seq(w), type, data, &len);
    json_decref(data);
    if (text == NULL)
        return;
    pthread_mutex_lock(&w->lock);
    for (watcher *x = w->watchers; x != NULL; x = x->next) {
        if (x->is_tail != to_tails)
            continue;
        if (to_tails         ? strcmp(x->scope.tenants[0], tenant) != 0
            : tenant != NULL ? !in_scope(&x->scope, tenant)
                             : !x->scope.all)
            continue;
        enqueue(w, x, text, len);
        pump(w, x);
    }
    pthread_mutex_unlock(&w->lock);
    free(text);
}

void pc_watch_event(pc_watch *w, const char *type, const char *tenant, json_t *data)
{
    publish(w, type, tenant, data, false);
}

void pc_watch_tick(pc_watch *w, int64_t now_ms)
{
    if (w == NULL)
        return;
    static const char keepalive[] = ": keepalive\n\n";
    pthread_mutex_lock(&w->lock);
    for (watcher *x = w->watchers; x != NULL; x = x->next) {
        /* A cut watcher is closed once its "cut" is written. */
        if (x->cut_sent && x->writing == NULL && x->head == NULL)
            x->closing = true;
        if (x->writing != NULL || x->closing ||
            now_ms - x->last_write_ms < (int64_t)w->opt.keepalive_ms)
            continue;
        if ((x->writing = malloc(sizeof(keepalive))) == NULL)
            continue;
        memcpy(x->writing, keepalive, sizeof(keepalive));
        x->last_write_ms = now_ms;
        pc_httpd_stream_write(x->st, x->writing, sizeof(keepalive) - 1, w->opt.write_timeout_ms,
                              written, x);
    }
    /* Closing watchers with no write in flight go now. */
    watcher *gone = NULL;
    for (watcher **p = &w->watchers; *p != NULL;) {
        watcher *x = *p;
        if (x->closing && x->writing == NULL) {
            *p = x->next;
            w->n--;
            w->n_tails -= x->is_tail;
            pc_metric_set(w->m_watchers, w->n);
            x->next = gone;
            gone = x;
        } else {
            p = &x->next;
        }
    }
    pthread_mutex_unlock(&w->lock);
    while (gone != NULL) {
        watcher *x = gone;
        gone = x->next;
        pc_httpd_stream_close(x->st);
        free_watcher(x);
    }
}

size_t pc_watch_count(pc_watch *w)
{
    pthread_mutex_lock(&w->lock);
    size_t n = w->n;
    pthread_mutex_unlock(&w->lock);
    return n;
}

uint64_t pc_watch_cut_total(pc_watch *w)
{
    pthread_mutex_lock(&w->lock);
    uint64_t n = w->cut_total;
    pthread_mutex_unlock(&w->lock);
    return n;
}

void pc_watch_stop(pc_watch *w)
{
    if (w == NULL)
        return;
    /* Closing a stream cancels its write in flight and waits for the
     * write's callback, which finds the hub stopping and does nothing
     * more: take the list first, then close outside the lock. */
    pthread_mutex_lock(&w->lock);
    w->stopping = true;
    watcher *all = w->watchers;
    w->watchers = NULL;
    w->n = 0;
    w->n_tails = 0;
    pthread_mutex_unlock(&w->lock);
    while (all != NULL) {
        watcher *x = all;
        all = x->next;
        pc_httpd_stream_close(x->st);
        free_watcher(x);
    }
}

void pc_watch_free(pc_watch *w)
{
    if (w == NULL)
        return;
    pc_watch_stop(w);
    pthread_mutex_destroy(&w->lock);
    free(w);
}
