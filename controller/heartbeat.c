/* heartbeat.c - signed heartbeats (see heartbeat.h). */
#include "heartbeat.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "envelope.h"
#include "log.h"

#define HEARTBEAT_VALID_MIN_MS 30000
/* A burst of commits is followed by a heartbeat this soon after its last
 * commit, so an agent that missed the burst's tail learns the head in
 * milliseconds instead of up to one interval later. */
#define HEARTBEAT_TAIL_MS 20

struct pc_heartbeat {
    uv_timer_t timer;
    uv_timer_t tail; /* one-shot, restarted by every kick */
    int open_handles;
    int64_t last_time_ms; /* each heartbeat's time is above the last one's */
    uint64_t interval_ms;
    char *controller_id;
    pc_signer *signer;
    pc_store *store;
    pc_publisher *pub;
    bool cannot_sign; /* warned already: say it once, not every period */
};

void pc_heartbeat_send(pc_heartbeat *h)
{
    if (h == NULL)
        return;
    uint64_t head = 0;
    pc_err err;
    if (pc_store_applied_seq(h->store, &head, &err) != PC_OK) {
        pc_warn("heartbeat", "no heartbeat: %s", err.msg);
        return;
    }
    Popcast__Heartbeat hb = POPCAST__HEARTBEAT__INIT;
    hb.head_seq = head;
    /* Agents refuse a heartbeat not newer than the last they accepted (a
     * replay); two in the same millisecond must still both be new. */
    hb.time_unix_ms = pc_wall_ms();
    if (hb.time_unix_ms <= h->last_time_ms)
        hb.time_unix_ms = h->last_time_ms + 1;
    h->last_time_ms = hb.time_unix_ms;
    /* The expiry stops an old heartbeat from being replayed to hide that
     * the controller is gone; it must also survive ordinary clock skew
     * between machines, hence a floor of HEARTBEAT_VALID_MIN_MS. */
    uint64_t valid = 3 * h->interval_ms;
    if (valid < HEARTBEAT_VALID_MIN_MS)
        valid = HEARTBEAT_VALID_MIN_MS;
    hb.expires_unix_ms = hb.time_unix_ms + (int64_t)valid;
    hb.controller_id = h->controller_id;
    Popcast__SignedHeartbeat sh;
    const pc_signing_key *key = NULL;
    if (pc_signer_current(h->signer, &key, &err) != PC_OK ||
        pc_envelope_sign_heartbeat(key, &hb, &sh, &err) != PC_OK) {
        if (!h->cannot_sign)
            pc_warn("heartbeat", "cannot sign heartbeats (agents will go stale): %s", err.msg);
        h->cannot_sign = true;
        return;
    }
    if (h->cannot_sign)
        pc_info("heartbeat", "signing heartbeats again");
    h->cannot_sign = false;
    (void)pc_publisher_send_heartbeat(h->pub, &sh, NULL);
    free(sh.heartbeat.data);
    free(sh.signature.data);
    free(sh.key_id.data);
}

static void on_timer(uv_timer_t *t)
{
    pc_heartbeat_send(t->data);
}

void pc_heartbeat_kick(pc_heartbeat *h)
{
    if (h != NULL)
        uv_timer_start(&h->tail, on_timer, HEARTBEAT_TAIL_MS, 0);
}

int pc_heartbeat_start(pc_heartbeat **out, uv_loop_t *loop, uint64_t interval_ms,
                       const char *controller_id, pc_signer *signer, pc_store *store,
                       pc_publisher *pub, pc_err *err)
{
    *out = NULL;
    if (interval_ms == 0)
        return PC_OK;
    pc_heartbeat *h = calloc(1, sizeof(*h));
    if (h == NULL || (h->controller_id = strdup(controller_id)) == NULL) {
        free(h);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    h->interval_ms = interval_ms;
    h->signer = signer;
    h->store = store;
    h->pub = pub;
    uv_timer_init(loop, &h->timer);
    uv_timer_init(loop, &h->tail);
    h->timer.data = h->tail.data = h;
    h->open_handles = 2;
    uv_timer_start(&h->timer, on_timer, interval_ms, interval_ms);
    *out = h;
    return PC_OK;
}

static void free_after_close(uv_handle_t *handle)
{
    pc_heartbeat *h = handle->data;
    if (--h->open_handles > 0)
        return;
    free(h->controller_id);
    free(h);
}

void pc_heartbeat_stop(pc_heartbeat *h)
{
    if (h == NULL)
        return;
    uv_timer_stop(&h->timer);
    uv_timer_stop(&h->tail);
    uv_close((uv_handle_t *)&h->timer, free_after_close);
    uv_close((uv_handle_t *)&h->tail, free_after_close);
}
