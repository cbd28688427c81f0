/* tail_buffer.c - tenants' log lines waiting for the shipper (see
 * tail_buffer.h). */
#include "tail_buffer.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"
#include "strmap.h"

#define DEFAULT_MAX_LINES     4096
#define DEFAULT_MAX_BYTES     (1u << 20)
#define DEFAULT_REQUEST_LINES 100
#define DEFAULT_WANT_TTL_MS   10000

/* What the buffer knows of a tenant that is or was tailed. */
typedef struct tenant_state {
    uint64_t mask; /* controllers that asked for it in their latest ask */
    uint64_t dropped, sampled_out;
    int64_t second; /* the request-line window (unix seconds) and its lines */
    uint32_t lines_in_second;
} tenant_state;

typedef struct line {
    struct line *next;
    Popcast__TailRecord rec;
    size_t bytes;
    char tenant[PC_TENANT_MAX + 1];
    char method[16];
    char text[]; /* message, NUL, path, NUL */
} line;

struct pc_tail_buffer {
    pc_tail_buffer_options opt;
    pthread_mutex_t lock;
    pc_strmap *tenants; /* name -> tenant_state */
    int64_t until_ms[PC_TAIL_CONTROLLERS_MAX];
    _Atomic size_t n_wanted; /* tenants with a non-empty mask: 0 is the fast path */
    line *head, *tail;
    size_t n_lines, bytes;
    uint64_t dropped_total;
};

pc_tail_buffer *pc_tail_buffer_new(const pc_tail_buffer_options *opt)
{
    if (opt->controllers == 0 || opt->controllers > PC_TAIL_CONTROLLERS_MAX)
        return NULL;
    pc_tail_buffer *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->opt = *opt;
    if (b->opt.max_lines == 0)
        b->opt.max_lines = DEFAULT_MAX_LINES;
    if (b->opt.max_bytes == 0)
        b->opt.max_bytes = DEFAULT_MAX_BYTES;
    if (b->opt.request_lines_per_s == 0)
        b->opt.request_lines_per_s = DEFAULT_REQUEST_LINES;
    if (b->opt.want_ttl_ms == 0)
        b->opt.want_ttl_ms = DEFAULT_WANT_TTL_MS;
    if ((b->tenants = pc_strmap_new()) == NULL) {
        free(b);
        return NULL;
    }
    pthread_mutex_init(&b->lock, NULL);
    return b;
}

static void free_lines(line *l)
{
    while (l != NULL) {
        line *next = l->next;
        free(l);
        l = next;
    }
}

void pc_tail_buffer_free(pc_tail_buffer *b)
{
    if (b == NULL)
        return;
    size_t pos = 0;
    const char *key;
    void *value;
    while (pc_strmap_next(b->tenants, &pos, &key, &value))
        free(value);
    pc_strmap_free(b->tenants);
    free_lines(b->head);
    pthread_mutex_destroy(&b->lock);
    free(b);
}

/* The controllers whose ask for t has not lapsed (lock held). */
static uint64_t live_mask(const pc_tail_buffer *b, const tenant_state *t, int64_t now_ms)
{
    uint64_t m = 0;
    for (size_t c = 0; c < b->opt.controllers; c++)
        if ((t->mask >> c & 1) && b->until_ms[c] > now_ms)
            m |= 1ull << c;
    return m;
}

void pc_tail_buffer_want(pc_tail_buffer *b, size_t c, char *const *tenants, size_t n,
                         int64_t now_ms)
{
    if (c >= b->opt.controllers)
        return;
    pthread_mutex_lock(&b->lock);
    size_t pos = 0;
    const char *key;
    void *value;
    while (pc_strmap_next(b->tenants, &pos, &key, &value))
        ((tenant_state *)value)->mask &= ~(1ull << c);
    for (size_t i = 0; i < n; i++) {
        if (!pc_tenant_name_valid(tenants[i]))
            continue;
        tenant_state *t = pc_strmap_get(b->tenants, tenants[i]);
        if (t == NULL) {
            if ((t = calloc(1, sizeof(*t))) == NULL)
                continue;
            if (pc_strmap_put(b->tenants, tenants[i], t) != PC_OK) {
                free(t);
                continue;
            }
        }
        t->mask |= 1ull << c;
    }
    b->until_ms[c] = now_ms + (int64_t)b->opt.want_ttl_ms;
    /* Tenants nobody asks for any more go, once their drops were sent
     * (take clears those). A removal during the walk would disturb it:
     * gather first. */
    size_t n_wanted = 0, n_gone = 0;
    const char **gone = calloc(pc_strmap_count(b->tenants) + 1, sizeof(*gone));
    pos = 0;
    while (pc_strmap_next(b->tenants, &pos, &key, &value)) {
        tenant_state *t = value;
        if (t->mask != 0)
            n_wanted++;
        else if (t->dropped == 0 && t->sampled_out == 0 && gone != NULL)
            gone[n_gone++] = key;
    }
    for (size_t i = 0; i < n_gone; i++)
        free(pc_strmap_remove(b->tenants, gone[i]));
    free(gone);
    atomic_store(&b->n_wanted, n_wanted);
    pthread_mutex_unlock(&b->lock);
}

bool pc_tail_buffer_wanted(pc_tail_buffer *b, const char *tenant, int64_t now_ms)
{
    if (b == NULL || atomic_load(&b->n_wanted) == 0)
        return false;
    pthread_mutex_lock(&b->lock);
    tenant_state *t = pc_strmap_get(b->tenants, tenant);
    bool wanted = t != NULL && live_mask(b, t, now_ms) != 0;
    pthread_mutex_unlock(&b->lock);
    return wanted;
}

bool pc_tail_buffer_sample(pc_tail_buffer *b, const char *tenant, int64_t now_ms)
{
    pthread_mutex_lock(&b->lock);
    tenant_state *t = pc_strmap_get(b->tenants, tenant);
    bool keep = false;
    if (t != NULL && live_mask(b, t, now_ms) != 0) {
        int64_t second = now_ms / 1000;
        if (t->second != second) {
            t->second = second;
            t->lines_in_second = 0;
        }
        keep = t->lines_in_second < b->opt.request_lines_per_s;
        if (keep)
            t->lines_in_second++;
        else
            t->sampled_out++;
    }
    pthread_mutex_unlock(&b->lock);
    return keep;
}

void pc_tail_buffer_add(pc_tail_buffer *b, const pc_tail_line *in, int64_t now_ms)
{
    size_t mlen = in->message ? in->message_len : 0;
    if (mlen > PC_PRINT_LINE_MAX)
        mlen = PC_PRINT_LINE_MAX;
    size_t plen = in->path ? strnlen(in->path, PC_TAIL_PATH_MAX) : 0;
    size_t bytes = sizeof(line) + mlen + plen + 2;
    pthread_mutex_lock(&b->lock);
    tenant_state *t = pc_strmap_get(b->tenants, in->tenant);
    if (t == NULL || live_mask(b, t, now_ms) == 0) {
        pthread_mutex_unlock(&b->lock);
        return;
    }
    line *l = NULL;
    if (b->n_lines >= b->opt.max_lines || b->bytes + bytes > b->opt.max_bytes ||
        (l = malloc(bytes)) == NULL) {
        t->dropped++;
        b->dropped_total++;
        pthread_mutex_unlock(&b->lock);
        return;
    }
    popcast__tail_record__init(&l->rec);
    l->next = NULL;
    l->bytes = bytes;
    snprintf(l->tenant, sizeof(l->tenant), "%s", in->tenant);
    snprintf(l->method, sizeof(l->method), "%s", in->method ? in->method : "");
    memcpy(l->text, mlen ? in->message : "", mlen);
    l->text[mlen] = '\0';
    memcpy(l->text + mlen + 1, plen ? in->path : "", plen);
    l->text[mlen + 1 + plen] = '\0';
    l->rec.tenant = l->tenant;
    l->rec.version = in->version;
    l->rec.kind = in->kind;
    l->rec.time_unix_ms = in->time_unix_ms;
    l->rec.message = l->text;
    l->rec.method = l->method;
    l->rec.path = l->text + mlen + 1;
    l->rec.status = in->status;
    l->rec.duration_us = in->duration_us;
    if (b->tail != NULL)
        b->tail->next = l;
    else
        b->head = l;
    b->tail = l;
    b->n_lines++;
    b->bytes += bytes;
    pthread_mutex_unlock(&b->lock);
}

void pc_tail_buffer_count_dropped(pc_tail_buffer *b, const char *tenant, uint64_t n, int64_t now_ms)
{
    pthread_mutex_lock(&b->lock);
    tenant_state *t = pc_strmap_get(b->tenants, tenant);
    if (t != NULL && live_mask(b, t, now_ms) != 0) {
        t->dropped += n;
        b->dropped_total += n;
    }
    pthread_mutex_unlock(&b->lock);
}

bool pc_tail_buffer_take(pc_tail_buffer *b, int64_t now_ms, pc_tail_taken *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&b->lock);
    size_t n_drops = 0, pos = 0;
    const char *key;
    void *value;
    while (pc_strmap_next(b->tenants, &pos, &key, &value)) {
        tenant_state *t = value;
        n_drops += t->dropped != 0 || t->sampled_out != 0;
    }
    if (b->n_lines == 0 && n_drops == 0) {
        pthread_mutex_unlock(&b->lock);
        return false;
    }
    /* The lines move to out as they are: each record lives inside its
     * line, which pc_tail_taken_clear frees. */
    out->records = calloc(b->n_lines + 1, sizeof(*out->records));
    out->record_masks = calloc(b->n_lines + 1, sizeof(*out->record_masks));
    out->drops = calloc(n_drops + 1, sizeof(*out->drops));
    out->drop_masks = calloc(n_drops + 1, sizeof(*out->drop_masks));
    if (out->records == NULL || out->record_masks == NULL || out->drops == NULL ||
        out->drop_masks == NULL) {
        /* What is held stays; its lines are counted when they are dropped
         * for want of room. */
        pthread_mutex_unlock(&b->lock);
        pc_tail_taken_clear(out);
        return false;
    }
    for (line *l = b->head; l != NULL; l = l->next) {
        tenant_state *t = pc_strmap_get(b->tenants, l->tenant);
        uint64_t m = t ? live_mask(b, t, now_ms) : 0;
        out->records[out->n_records] = &l->rec;
        out->record_masks[out->n_records++] = m;
    }
    b->head = b->tail = NULL;
    b->n_lines = 0;
    b->bytes = 0;
    pos = 0;
    while (pc_strmap_next(b->tenants, &pos, &key, &value)) {
        tenant_state *t = value;
        if (t->dropped == 0 && t->sampled_out == 0)
            continue;
        Popcast__TailDrop *d = malloc(sizeof(*d));
        if (d != NULL)
            popcast__tail_drop__init(d);
        if (d == NULL || (d->tenant = strdup(key)) == NULL) {
            free(d);
            continue; /* counted again next time */
        }
        d->dropped = t->dropped;
        d->sampled_out = t->sampled_out;
        t->dropped = t->sampled_out = 0;
        out->drops[out->n_drops] = d;
        out->drop_masks[out->n_drops++] = live_mask(b, t, now_ms);
    }
    pthread_mutex_unlock(&b->lock);
    return true;
}

void pc_tail_taken_clear(pc_tail_taken *t)
{
    for (size_t i = 0; i < t->n_records; i++)
        free((char *)t->records[i] - offsetof(line, rec));
    for (size_t i = 0; i < t->n_drops; i++) {
        free(t->drops[i]->tenant);
        free(t->drops[i]);
    }
    free(t->records);
    free(t->record_masks);
    free(t->drops);
    free(t->drop_masks);
    memset(t, 0, sizeof(*t));
}

uint64_t pc_tail_buffer_dropped_total(pc_tail_buffer *b)
{
    pthread_mutex_lock(&b->lock);
    uint64_t n = b->dropped_total;
    pthread_mutex_unlock(&b->lock);
    return n;
}
