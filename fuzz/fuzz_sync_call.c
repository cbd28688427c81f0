/* fuzz_sync_call.c - what a controller does with a request on its sync
 * socket: decode it, and feed status reports to the rollout tracker (the
 * only state a remote peer can change there), then render the views. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "fuzz.h"
#include "popcast.pb-c.h"
#include "rollout.h"

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
    popcast__sync_call__free_unpacked(call, NULL);
    return 0;
}
