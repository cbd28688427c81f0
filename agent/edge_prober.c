/* edge_prober.c - the edge's health, asked in the background (see
 * edge_prober.h). */
#include "edge_prober.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "ticker.h"

struct pc_edge_prober {
    pc_edge *edge;
    uint64_t interval_ms, timeout_ms;
    pc_metric *m_probes;
    pthread_mutex_t lock; /* guards what follows */
    bool ok;
    int64_t done_ms; /* when the last probe completed (pc_mono_ms) */
    char why[sizeof(((pc_err *)0)->msg)];
    pc_ticker *ticker;
};

static void probe_once(pc_edge_prober *p)
{
    pc_err err = {0};
    bool ok = pc_edge_probe(p->edge, (int)p->timeout_ms, &err) == PC_OK;
    pc_metric_add(p->m_probes, 1);
    pthread_mutex_lock(&p->lock);
    p->ok = ok;
    p->done_ms = pc_mono_ms();
    snprintf(p->why, sizeof(p->why), "%s", ok ? "" : err.msg);
    pthread_mutex_unlock(&p->lock);
}

static void probe(void *arg)
{
    probe_once(arg);
}

int pc_edge_prober_start(pc_edge_prober **out, pc_edge *edge, uint64_t interval_ms,
                         uint64_t timeout_ms, pc_metrics *metrics, pc_err *err)
{
    *out = NULL;
    if (edge == NULL || interval_ms == 0 || timeout_ms == 0 || timeout_ms > INT32_MAX)
        return pc_err_set(err, PC_E_INVALID, "edge prober: no edge, or a zero interval or timeout");
    pc_edge_prober *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    p->edge = edge;
    p->interval_ms = interval_ms;
    p->timeout_ms = timeout_ms;
    if (metrics != NULL)
        p->m_probes = pc_metrics_counter(metrics, "popcast_agent_edge_probes_total", NULL,
                                         "health probes the agent sent its own edge (for /readyz)");
    pthread_mutex_init(&p->lock, NULL);
    probe_once(p);
    int rc = pc_ticker_start(&p->ticker, interval_ms, probe, p, err);
    if (rc != PC_OK) {
        pthread_mutex_destroy(&p->lock);
        free(p);
        return rc;
    }
    *out = p;
    return PC_OK;
}

bool pc_edge_prober_ok(pc_edge_prober *p, char *why, size_t why_len)
{
    pthread_mutex_lock(&p->lock);
    int64_t age = pc_mono_ms() - p->done_ms;
    bool ok = p->ok;
    if (age > (int64_t)(p->interval_ms + p->timeout_ms + 1000)) {
        ok = false;
        snprintf(why, why_len, "the edge's last probe completed %lld ms ago", (long long)age);
    } else {
        snprintf(why, why_len, "%s", p->why);
    }
    pthread_mutex_unlock(&p->lock);
    return ok;
}

void pc_edge_prober_stop(pc_edge_prober *p)
{
    if (p == NULL)
        return;
    pc_ticker_stop(p->ticker);
    pthread_mutex_destroy(&p->lock);
    free(p);
}
