/* fuzz_sync_call.c - what a controller does with a request on its sync
 * socket: decode it, and feed status reports to the rollout tracker (the
 * only state a remote peer can change there), then render the views; a
 * tail batch is decoded, checked and rendered as its tails' events. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "fuzz.h"
#include "popcast.pb-c.h"
#include "rollout.h"
#include "tail_lines.h"

static pc_rollout *rollout;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (rollout == NULL) {
        pc_rollout_options opt = {
            .gone_after_ms = 30000, .report_stale_ms = 10000, .max_agents = 64};
        rollout = pc_rollout_new(&opt);
    }
    Popcast__SyncCall *call = popcast__sync_call__unpack(NULL, size, data);
    if (call == NULL)
        return 0;
    if (call->body_case == POPCAST__SYNC_CALL__BODY_STATUS) {
        pc_err err;
        pc_rollout_report(rollout, call->status, false, 1000, NULL, &err);
        json_decref(pc_rollout_fleet_json(rollout, 10, 2000));
        pc_rollout_query q = {.tenant = "acme", .version = 1, .seq = 1, .fraction = 1.0};
        json_decref(pc_rollout_version_json(rollout, &q, 2000, NULL));
    }
    if (call->body_case == POPCAST__SYNC_CALL__BODY_TAIL) {
        Popcast__TailBatch *b =
            popcast__tail_batch__unpack(NULL, call->tail->batch.len, call->tail->batch.data);
        if (b != NULL && pc_tail_batch_invalid(b) == NULL) {
            for (size_t i = 0; i < b->n_records; i++) {
                json_t *o = pc_tail_line_json(b, b->records[i]);
                char *text = o ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
                if (o != NULL && text == NULL)
                    __builtin_trap(); /* a line that cannot be sent as JSON */
                free(text);
                json_decref(o);
            }
            for (size_t i = 0; i < b->n_drops; i++)
                json_decref(pc_tail_drop_json(b, b->drops[i]));
        }
        if (b != NULL)
            popcast__tail_batch__free_unpacked(b, NULL);
    }
    popcast__sync_call__free_unpacked(call, NULL);
    return 0;
}
