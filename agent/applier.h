/* applier.h - the agent's state machine for committed entries: verify,
 * store, make live, and remember what was refused.
 *
 * For every entry, in order (docs/protocol.md, "agent"):
 *   1. verify: a key allowed at the entry's seq (root keys, then each
 *      rotation's announced key: common/trust.h), signature over the exact manifest bytes, the
 *      bundle's size and BLAKE2b-256 against the manifest;
 *   2. order: seq == applied + 1 (lower: duplicate/replay, ignored; higher:
 *      a gap, which catch-up must fill first);
 *   3. anti-rollback: version above every version the tenant ever had;
 *   4. store: blob, tenant pointer and applied seq in ONE LMDB transaction;
 *   5. make live, if the entry's target names this agent (target.h; else
 *      the version is HELD and what served keeps serving, until a STAGE
 *      entry naming the agent makes it live): the tenant's runtime adapter
 *      prepares the version off the request path and swaps it in; on
 *      failure the old version keeps serving and the entry is nacked with
 *      the runtime's error.
 * Every refusal is counted (popcast_agent_refused_total{reason}) and
 * logged; only refusals of entries that passed verification (a real
 * tenant, version and seq) become nacks.
 *
 * What became of each version is an outcome (docs/protocol.md, "Version
 * outcomes"): LIVE once it went live (a delete: took effect), NACKED when
 * refused after verification or not loadable, HELD while stored but not
 * targeted here. Outcomes of each tenant's 8 most recent versions are kept
 * in memory and in the store (registry.h, "outcome.<tenant>"), loaded at
 * start, and never rewritten, except a NACKED version that loads later
 * (at start) becoming LIVE, and a HELD one becoming LIVE or NACKED when a
 * stage reaches this agent. At start, a held active version stays held
 * and the version that served before serves again. Reports give
 * the live version the runtimes serve, whatever the store could record
 * (a failed record is flagged and counted, never hidden).
 *
 * Runs on the agent's loop thread; the status getters may be called from
 * any thread. */
#ifndef PC_APPLIER_H
#define PC_APPLIER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "adapter.h"
#include "crypto.h"
#include "err.h"
#include "metrics.h"
#include "popcast.pb-c.h"
#include "store.h"

typedef struct pc_applier pc_applier;

#define PC_APPLIER_MAX_SKEW_MS 30000

typedef struct pc_applier_options {
    pc_store *store;
    /* Who this agent is, as entries' targets name it (target.h). */
    const char *agent_id, *pop;
    const pc_keyring *trusted; /* root keys (rotations come from the log) */
    pc_adapter **adapters;     /* by Manifest.runtime */
    size_t n_adapters;
    pc_metrics *metrics;
    size_t max_bundle;
    uint64_t stale_after_ms; /* no valid heartbeat for this long: stale */
    /* How far a heartbeat's or a snapshot assertion's time may be ahead of
     * this agent's clock (0: PC_APPLIER_MAX_SKEW_MS). */
    uint64_t max_clock_skew_ms;
    /* Called (without locks held) when something changed that the
     * controllers should hear about; need_sync is set when the applier
     * found itself behind (a seq gap, or a heartbeat ahead of it). */
    void (*on_change)(void *arg, int need_sync);
    void *on_change_arg;
    /* Test only: drop this many per mille of pub/sub entries, with a
     * fixed-seed generator, to exercise catch-up. 0 in production. */
    unsigned test_drop_permille;
    uint64_t test_drop_seed;
} pc_applier_options;

/* Rebuilds the key chain from the rotations in the store, verifying each
 * again from opt->trusted (pc_trust_advance_signed). A rotation that does
 * not verify fails the call with the verification's error, naming its seq:
 * the agent must not start on a chain with a hole in it. */
int pc_applier_new(pc_applier **out, const pc_applier_options *opt, pc_err *err);
void pc_applier_free(pc_applier *a);
/* Any thread: the agent is stopping. A snapshot being made live stops
 * there (its tenants are stored; the next start makes them live). */
void pc_applier_interrupt(pc_applier *a);

/* Startup: makes every tenant's stored version live, straight from LMDB,
 * with no controller involved (static stability). A tenant whose active
 * version fails to load falls back to its last live version. Returns the
 * number of tenants made live. */
size_t pc_applier_load(pc_applier *a);

/* One pub/sub message (a Publication). Never fails: bad input is counted,
 * logged and dropped. */
void pc_applier_on_publication(pc_applier *a, const uint8_t *data, size_t len);

/* Messages that arrived together (up to the subscriber's drain batch), in
 * order, as pc_applier_on_publication would take them one by one, except
 * that consecutive entries are applied in groups
 * (pc_applier_apply_entries). */
void pc_applier_on_publications(pc_applier *a, const uint8_t *const *data, const size_t *len,
                                size_t n);

/* Most entries stored in one transaction by pc_applier_apply_entries. */
#define PC_APPLIER_GROUP_MAX 64

/* Applies es[0..n) in order, with the outcome pc_applier_apply_entry would
 * give each, in fewer transactions: every run of at least two that verify,
 * follow the applied seq, come with their bundles and rotate no key is
 * stored in one transaction (pc_store_apply_batch: one fsync) and what it
 * makes live recorded in one more. Any other entry, and a run the store
 * refuses, goes alone. Returns how many were applied. */
int pc_applier_apply_entries(pc_applier *a, Popcast__Entry *const *es, size_t n);

/* Applies one entry (from pub/sub or catch-up). Returns PC_OK when applied
 * (live or nacked), PC_E_DUPLICATE for an already applied seq, PC_E_SEQ_GAP
 * when entries are missing before it, or the refusal's error. */
int pc_applier_apply_entry(pc_applier *a, const Popcast__Entry *e, pc_err *err);

/* Verifies an entry announced without its bundle (bundle_omitted), before
 * anything of the bundle is fetched: its signed manifest under the keys in
 * force (as pc_applier_apply_entry would), and that the size it declares
 * is within max_bundle. On success *out is the verified manifest (free
 * with popcast__manifest__free_unpacked): fetch exactly bundle_size bytes
 * by bundle_hash. A refusal is counted as any other. */
int pc_applier_verify_announced(pc_applier *a, const Popcast__Entry *e, Popcast__Manifest **out,
                                pc_err *err);

/* Verifies a snapshot before anything of it is fetched or stored
 * (docs/protocol.md, "snapshots"), with bundles that may still be omitted
 * (each declared size within max_bundle):
 *   - the rotations (every KEY_ROTATION up to its seq, in order) verify
 *     from the root keys and extend the ones already applied;
 *   - its SnapshotAssertion is signed by the key current as of those
 *     rotations; the reply's seq is the asserted one; the digests match
 *     the rotations and tenants carried; no rotation is past the seq; it
 *     is dated within max_clock_skew_ms ahead of this agent's clock and
 *     not more than twice that behind (a replay); and while heartbeats
 *     arrive (not stale), its seq is not past the last heartbeat's head;
 *   - each tenant entry verifies under the key current at its own seq.
 * Every refusal is counted and logged. PC_E_DUPLICATE if the snapshot is
 * not ahead of us. With ahead non-NULL, a snapshot whose only fault is a
 * seq past the last heartbeat's head is not refused (not counted): *ahead
 * gets that seq (0 otherwise), and the caller may verify again once a
 * heartbeat reaches it (pc_applier_head_seq). */
int pc_applier_verify_snapshot(pc_applier *a, const Popcast__SnapshotResponse *snap,
                               uint64_t *ahead, pc_err *err);
/* Installs a verified snapshot (every tenant's latest entry as of its
 * seq), for an agent too far behind, new, or wiped: entries are snap's
 * tenants, in the same order, with their bundles. Everything is verified
 * again (but the time), then tenants whose snapshot version is above what
 * they have are stored in one transaction with the applied seq (the
 * asserted one), and made live. PC_E_DUPLICATE if the snapshot is not
 * ahead of us. */
int pc_applier_install_snapshot(pc_applier *a, const Popcast__SnapshotResponse *snap,
                                Popcast__Entry *const *entries, pc_err *err);

uint64_t pc_applier_applied_seq(pc_applier *a);
/* The head seq from the last valid heartbeat (0 if none yet). */
uint64_t pc_applier_head_seq(pc_applier *a);
/* No valid heartbeat for stale_after_ms. */
int pc_applier_is_stale(pc_applier *a);
/* Milliseconds since the last valid heartbeat; -1 if none came since
 * start (is_stale counts from start then: a restarted agent serves its
 * stored versions as fresh for stale_after_ms). */
int64_t pc_applier_heartbeat_age_ms(pc_applier *a);
uint64_t pc_applier_stale_after_ms(pc_applier *a);

/* The agent's identity key, whose public half every status report
 * carries (a controller binds it to the agent id on first use). Call once,
 * before reports are built. */
void pc_applier_set_identity(pc_applier *a, const pc_public_key *pk);

/* The status report for the controllers (agent_id, pop and counter are
 * the caller's). Free with pc_applier_status_clear. */
int pc_applier_status(pc_applier *a, Popcast__AgentStatus *out);
/* The same without its tenants and nacks (the costly part, which grows
 * with the tenants): for a reporter whose tenant part is current. */
int pc_applier_status_header(pc_applier *a, Popcast__AgentStatus *out);
/* A number that has moved whenever anything the tenant part of a status
 * is built from (the store, the outcomes, the live versions, the nacks)
 * has changed since it was read: a tenant part built after reading g is
 * current while the number is still g. */
uint64_t pc_applier_tenants_generation(pc_applier *a);
void pc_applier_status_clear(Popcast__AgentStatus *st);

/* Status as JSON (docs/api.md, agent /v1/status): applied seq, tenants
 * with applied, live and recorded live versions and their outcomes, the
 * nacks, failed records. One tree of every tenant: for tests and small
 * tables; the admin endpoint writes the document a tenant at a time. */
json_t *pc_applier_status_json(pc_applier *a);
/* The same without "tenants". NULL when out of memory. */
json_t *pc_applier_status_header_json(pc_applier *a);
/* Calls each with every tenant's status object (an element of
 * "tenants"), in name order, one at a time: each may add members to it,
 * and it is released when each returns. A nonzero return from each
 * stops the walk and is returned (PC_E_NOMEM: a tenant's object could
 * not be built); PC_E_STORE when the store could not be read. */
int pc_applier_foreach_tenant_json(pc_applier *a, int (*each)(void *arg, json_t *tenant),
                                   void *arg);

#endif
