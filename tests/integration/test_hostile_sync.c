/* test_hostile_sync.c - a sync endpoint that lies. The agent's --sync
 * address here is a real nng rep socket run by the test, answering with
 * lies, garbage and forgeries; the agent subscribes to a pub socket the
 * test owns too. Whatever the endpoint answers, the agent keeps serving,
 * applies nothing that is not genuine, and asks it at a bounded rate. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>

#include "bundle.h"
#include "envelope.h"
#include "clock.h"
#include "harness.h"

/* The fake endpoint. */

typedef struct fake_sync fake_sync;
/* Builds the answer to one request (NULL: an empty status ack). */
typedef nng_msg *(*fake_answer)(fake_sync *f, const Popcast__SyncCall *call);

struct fake_sync {
    nng_socket rep;
    char url[64];
    pthread_t thread;
    atomic_int stop;
    atomic_int n_sync, n_snapshot, n_chunk, n_status;
    pthread_mutex_t lock; /* guards answer and state */
    fake_answer answer;
    int state;    /* the answer's own counter */
    nng_msg *raw; /* the request as received, while answer runs */
    nng_socket upstream;
    bool has_upstream; /* a req socket to a real controller's sync */
};

/* Asks the real controller (fake_upstream) what the agent asked: the fake
 * is an honest proxy. */
static nng_msg *forward(fake_sync *f)
{
    nng_msg *req = NULL, *rep = NULL;
    assert_true(f->has_upstream);
    assert_int_equal(nng_msg_dup(&req, f->raw), 0);
    if (nng_sendmsg(f->upstream, req, 0) != 0) {
        nng_msg_free(req);
        return NULL;
    }
    if (nng_recvmsg(f->upstream, &rep, 0) != 0)
        return NULL;
    return rep;
}

static void fake_upstream(fake_sync *f, const char *url)
{
    assert_int_equal(nng_req0_open(&f->upstream), 0);
    assert_int_equal(nng_socket_set_ms(f->upstream, NNG_OPT_SENDTIMEO, 10000), 0);
    assert_int_equal(nng_socket_set_ms(f->upstream, NNG_OPT_RECVTIMEO, 10000), 0);
    assert_int_equal(nng_socket_set_size(f->upstream, NNG_OPT_RECVMAXSZ, 256 << 20), 0);
    assert_int_equal(nng_dial(f->upstream, url, NULL, NNG_FLAG_NONBLOCK), 0);
    f->has_upstream = true;
}

static nng_msg *packed_reply(const Popcast__SyncReply *r)
{
    nng_msg *msg = NULL;
    assert_int_equal(nng_msg_alloc(&msg, popcast__sync_reply__get_packed_size(r)), 0);
    popcast__sync_reply__pack(r, nng_msg_body(msg));
    return msg;
}

static nng_msg *status_ack(void)
{
    Popcast__StatusAck ack = POPCAST__STATUS_ACK__INIT;
    Popcast__SyncReply r = POPCAST__SYNC_REPLY__INIT;
    r.body_case = POPCAST__SYNC_REPLY__BODY_STATUS_ACK;
    r.status_ack = &ack;
    return packed_reply(&r);
}

/* Bytes that never decode: field 31 with the invalid wire type 7. */
static nng_msg *garbage(void)
{
    nng_msg *msg = NULL;
    assert_int_equal(nng_msg_alloc(&msg, 64), 0);
    memset(nng_msg_body(msg), 0xff, 64);
    return msg;
}

static void *fake_run(void *arg)
{
    fake_sync *f = arg;
    while (!atomic_load(&f->stop)) {
        nng_msg *req = NULL;
        if (nng_recvmsg(f->rep, &req, 0) != 0)
            continue; /* receive timeout: look at stop */
        Popcast__SyncCall *call =
            popcast__sync_call__unpack(NULL, nng_msg_len(req), nng_msg_body(req));
        nng_msg *rep = NULL;
        if (call != NULL) {
            switch (call->body_case) {
            case POPCAST__SYNC_CALL__BODY_SYNC: atomic_fetch_add(&f->n_sync, 1); break;
            case POPCAST__SYNC_CALL__BODY_SNAPSHOT: atomic_fetch_add(&f->n_snapshot, 1); break;
            case POPCAST__SYNC_CALL__BODY_CHUNK: atomic_fetch_add(&f->n_chunk, 1); break;
            default: atomic_fetch_add(&f->n_status, 1); break;
            }
            if (call->body_case == POPCAST__SYNC_CALL__BODY_STATUS ||
                call->body_case == POPCAST__SYNC_CALL__BODY_SIGNED_STATUS) {
                rep = status_ack();
            } else {
                pthread_mutex_lock(&f->lock);
                f->raw = req;
                rep = f->answer != NULL ? f->answer(f, call) : NULL;
                f->raw = NULL;
                pthread_mutex_unlock(&f->lock);
            }
            popcast__sync_call__free_unpacked(call, NULL);
        }
        nng_msg_free(req);
        if (rep == NULL)
            rep = status_ack();
        if (nng_sendmsg(f->rep, rep, 0) != 0)
            nng_msg_free(rep);
    }
    return NULL;
}

static void fake_start(fake_sync *f, fake_answer answer)
{
    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->lock, NULL);
    f->answer = answer;
    snprintf(f->url, sizeof(f->url), "tcp://127.0.0.1:%d", pc_test_free_port());
    assert_int_equal(nng_rep0_open(&f->rep), 0);
    assert_int_equal(nng_socket_set_ms(f->rep, NNG_OPT_RECVTIMEO, 100), 0);
    assert_int_equal(nng_socket_set_size(f->rep, NNG_OPT_RECVMAXSZ, 4 << 20), 0);
    assert_int_equal(nng_listen(f->rep, f->url, NULL, 0), 0);
    assert_int_equal(pthread_create(&f->thread, NULL, fake_run, f), 0);
}

static void fake_set(fake_sync *f, fake_answer answer)
{
    pthread_mutex_lock(&f->lock);
    f->answer = answer;
    f->state = 0;
    pthread_mutex_unlock(&f->lock);
}

static void fake_stop(fake_sync *f)
{
    atomic_store(&f->stop, 1);
    pthread_join(f->thread, NULL);
    nng_close(f->rep);
    if (f->has_upstream)
        nng_close(f->upstream);
    pthread_mutex_destroy(&f->lock);
}

/* Requests that ask for something (not status reports). */
static int fake_asks(fake_sync *f)
{
    return atomic_load(&f->n_sync) + atomic_load(&f->n_snapshot) + atomic_load(&f->n_chunk);
}

/* The fixture: an agent whose only sync endpoint is the fake, subscribed
 * to a pub socket of the test's. */

static pc_test_env env;
static fake_sync fake;
static nng_socket pub;
static char pub_url[64];
static pc_test_agent agent;

/* A genuine (trusted key) deploy of tenant acme. */
typedef struct forged {
    Popcast__SignedManifest sm;
    uint8_t *bundle;
    size_t len;
} forged;

static void forge(forged *f, const pc_signing_key *key, uint64_t seq, uint64_t version,
                  const char *body)
{
    char src[256];
    pc_test_lua_hello(src, sizeof(src), body);
    assert_int_equal(pc_bundle_pack_single("main.lua", (const uint8_t *)src, strlen(src),
                                           &f->bundle, &f->len, NULL),
                     PC_OK);
    uint8_t hash[PC_HASH_LEN];
    pc_hash(hash, f->bundle, f->len);
    Popcast__Manifest m = POPCAST__MANIFEST__INIT;
    m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY;
    m.tenant = "acme";
    m.version = version;
    m.seq = seq;
    m.bundle_hash.data = hash;
    m.bundle_hash.len = PC_HASH_LEN;
    m.bundle_size = f->len;
    m.entrypoint = "main.lua";
    m.runtime = "lua";
    assert_int_equal(pc_envelope_sign_manifest(key, &m, &f->sm, NULL), PC_OK);
}

static void forged_free(forged *f)
{
    pc_envelope_signed_clear(&f->sm);
    free(f->bundle);
}

static forged genuine1; /* seq 1, version 1 */

static int setup(void **state)
{
    (void)state;
    pc_test_env_init(&env);
    memset(&agent, 0, sizeof(agent));
    forge(&genuine1, &env.key, 1, 1, "genuine v1");
    fake_start(&fake, NULL);
    snprintf(pub_url, sizeof(pub_url), "tcp://127.0.0.1:%d", pc_test_free_port());
    assert_int_equal(nng_pub0_open(&pub), 0);
    assert_int_equal(nng_listen(pub, pub_url, NULL, 0), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pc_test_agent_stop(&agent);
    nng_close(pub);
    fake_stop(&fake);
    forged_free(&genuine1);
    pc_test_env_cleanup(&env);
    return 0;
}

static void start_agent(void)
{
    const char *subs[] = {pub_url, NULL};
    const char *syncs[] = {fake.url, NULL};
    pc_test_agent_start(&env, &agent, "victim", subs, syncs, NULL);
}

static uint64_t agent_applied(void)
{
    json_t *s = pc_test_agent_status(&agent);
    assert_non_null(s);
    uint64_t seq = (uint64_t)json_integer_value(json_object_get(s, "applied_seq"));
    json_decref(s);
    return seq;
}

/* Lines of the agent's log containing needle. */
static int log_lines(const char *needle)
{
    FILE *f = fopen(agent.proc->log, "r");
    assert_non_null(f);
    char line[2048];
    int n = 0;
    while (fgets(line, sizeof(line), f) != NULL)
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

/* How many requests the agent sends the fake in window_ms. */
static int asks_in(int window_ms)
{
    int before = fake_asks(&fake);
    pc_test_sleep_ms(window_ms); /* the measurement window itself */
    return fake_asks(&fake) - before;
}

#define WINDOW_MS 3000
/* Backoff from 200 ms doubling, at most two requests a round (a sync and
 * a snapshot): about a dozen in the window. Without backoff an agent asks
 * thousands of times. */
#define ASKS_MAX 30

/* Lies that do not look like errors: the genuine entry 1 again and again
 * with "head is 5", and "snapshot required" followed by a snapshot that
 * is not ahead. */
static nng_msg *answer_in_circles(fake_sync *f, const Popcast__SyncCall *call)
{
    Popcast__SyncReply r = POPCAST__SYNC_REPLY__INIT;
    if (call->body_case == POPCAST__SYNC_CALL__BODY_SNAPSHOT) {
        Popcast__SnapshotResponse snap = POPCAST__SNAPSHOT_RESPONSE__INIT;
        snap.seq = 1;
        r.body_case = POPCAST__SYNC_REPLY__BODY_SNAPSHOT;
        r.snapshot = &snap;
        return packed_reply(&r);
    }
    if (call->body_case != POPCAST__SYNC_CALL__BODY_SYNC)
        return garbage();
    Popcast__SyncResponse sync = POPCAST__SYNC_RESPONSE__INIT;
    Popcast__Entry e = POPCAST__ENTRY__INIT;
    Popcast__Entry *entries[] = {&e};
    e.signed_ = &genuine1.sm;
    e.bundle.data = genuine1.bundle;
    e.bundle.len = genuine1.len;
    r.body_case = POPCAST__SYNC_REPLY__BODY_SYNC;
    r.sync = &sync;
    if (f->state++ % 2 == 0) {
        sync.head_seq = 5;
        sync.entries = entries;
        sync.n_entries = 1;
    } else {
        sync.head_seq = 5;
        sync.snapshot_required = 1;
    }
    return packed_reply(&r);
}

/* Lies that look like errors: garbage, and "head is 1000" with nothing. */
static nng_msg *answer_errors(fake_sync *f, const Popcast__SyncCall *call)
{
    if (call->body_case != POPCAST__SYNC_CALL__BODY_SYNC || f->state++ % 2 == 0)
        return garbage();
    Popcast__SyncReply r = POPCAST__SYNC_REPLY__INIT;
    Popcast__SyncResponse sync = POPCAST__SYNC_RESPONSE__INIT;
    sync.head_seq = 1000;
    r.body_case = POPCAST__SYNC_REPLY__BODY_SYNC;
    r.sync = &sync;
    return packed_reply(&r);
}

static void test_lying_endpoint_is_asked_at_a_bounded_rate(void **state)
{
    (void)state;
    fake_set(&fake, answer_in_circles);
    start_agent();
    int64_t deadline = pc_test_now_ms() + PC_TEST_START_TIMEOUT_MS;
    while (atomic_load(&fake.n_sync) == 0 && pc_test_now_ms() < deadline)
        pc_test_sleep_ms(10);
    assert_true(atomic_load(&fake.n_sync) > 0);
    int circles = asks_in(WINDOW_MS);
    fake_set(&fake, answer_errors);
    int errors = asks_in(WINDOW_MS);
    fprintf(stderr, "requests in %d ms: %d answered in circles, %d answered with errors\n",
            WINDOW_MS, circles, errors);
    assert_true(circles <= ASKS_MAX);
    assert_true(errors <= ASKS_MAX);
    /* The one genuine entry is all it applied, and it still serves it. */
    assert_int_equal(agent_applied(), 1);
    char body[64];
    uint64_t v = 0;
    assert_int_equal(pc_test_edge_get(&agent, "acme", "/", &v, body, sizeof(body)), 200);
    assert_int_equal(v, 1);
    /* The failures are in the log, but once per interval with a count,
     * not once per request. */
    int lines = log_lines("catch-up from");
    fprintf(stderr, "catch-up failure lines in the log: %d\n", lines);
    assert_true(lines >= 1 && lines <= 3);
}

/* Announcements: an entry whose bundle must be fetched by hash. */

#define HUGE_BUNDLE (200 * ((uint64_t)1 << 20)) /* declared; over the default max_bundle */

static forged announced; /* what answer_announcement offers as seq 2 */

/* A deploy at seq 2 declaring `size` bytes, signed by key, or (key NULL)
 * carrying the trusted key's id and a signature of zeros. */
static void forge_announcement(forged *f, const pc_signing_key *key, uint64_t size)
{
    memset(f, 0, sizeof(*f));
    uint8_t hash[PC_HASH_LEN];
    memset(hash, 0x5a, sizeof(hash));
    Popcast__Manifest m = POPCAST__MANIFEST__INIT;
    m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY;
    m.tenant = "acme";
    m.version = 2;
    m.seq = 2;
    m.bundle_hash.data = hash;
    m.bundle_hash.len = PC_HASH_LEN;
    m.bundle_size = size;
    m.entrypoint = "main.lua";
    m.runtime = "lua";
    assert_int_equal(pc_envelope_sign_manifest(key ? key : &env.key, &m, &f->sm, NULL), PC_OK);
    if (key == NULL)
        memset(f->sm.signature.data, 0, f->sm.signature.len);
}

static nng_msg *answer_announcement(fake_sync *f, const Popcast__SyncCall *call)
{
    (void)f;
    Popcast__SyncReply r = POPCAST__SYNC_REPLY__INIT;
    if (call->body_case == POPCAST__SYNC_CALL__BODY_CHUNK) {
        /* Serves whatever is asked: the bytes of `announced` if it has
         * them, zeros up to the declared size otherwise. */
        Popcast__BundleChunkResponse chunk = POPCAST__BUNDLE_CHUNK_RESPONSE__INIT;
        static uint8_t zeros[1 << 20];
        uint64_t total = announced.bundle ? announced.len : HUGE_BUNDLE;
        uint64_t off = call->chunk->offset < total ? call->chunk->offset : total;
        size_t len = total - off < sizeof(zeros) ? (size_t)(total - off) : sizeof(zeros);
        chunk.data.data = announced.bundle ? announced.bundle + off : zeros;
        chunk.data.len = len;
        chunk.total_size = total;
        r.body_case = POPCAST__SYNC_REPLY__BODY_CHUNK;
        r.chunk = &chunk;
        return packed_reply(&r);
    }
    if (call->body_case != POPCAST__SYNC_CALL__BODY_SYNC)
        return garbage();
    Popcast__SyncResponse sync = POPCAST__SYNC_RESPONSE__INIT;
    Popcast__Entry e = POPCAST__ENTRY__INIT;
    Popcast__Entry *entries[] = {&e};
    e.signed_ = &announced.sm;
    e.bundle_omitted = 1;
    sync.head_seq = 2;
    sync.entries = entries;
    sync.n_entries = 1;
    r.body_case = POPCAST__SYNC_REPLY__BODY_SYNC;
    r.sync = &sync;
    return packed_reply(&r);
}

/* Offers `announced` until the agent counts metric, then says how many
 * chunks it asked for meanwhile. */
static int chunks_until_counted(const char *metric)
{
    uint64_t before = pc_test_agent_metric(&agent, metric);
    int chunks = atomic_load(&fake.n_chunk);
    fake_set(&fake, answer_announcement);
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (pc_test_agent_metric(&agent, metric) == before && pc_test_now_ms() < deadline)
        pc_test_sleep_ms(20);
    fake_set(&fake, answer_errors);
    if (pc_test_agent_metric(&agent, metric) == before) {
        pc_proc_dump_log(agent.proc);
        fail_msg("the agent never counted %s", metric);
    }
    return atomic_load(&fake.n_chunk) - chunks;
}

static void test_announcement_verified_before_any_fetch(void **state)
{
    (void)state;
    /* Not signed, declaring 200 MiB: refused before a single chunk. */
    forge_announcement(&announced, NULL, HUGE_BUNDLE);
    int chunks = chunks_until_counted("popcast_agent_refused_total{reason=\"bad_signature\"}");
    pc_envelope_signed_clear(&announced.sm);
    fprintf(stderr, "unsigned 200 MiB announcement: %d chunks asked for\n", chunks);
    assert_int_equal(chunks, 0);
    /* Signed by the trusted key but over max_bundle: the same. */
    forge_announcement(&announced, &env.key, HUGE_BUNDLE);
    chunks = chunks_until_counted("popcast_agent_refused_total{reason=\"too_large\"}");
    pc_envelope_signed_clear(&announced.sm);
    fprintf(stderr, "signed announcement over max_bundle: %d chunks asked for\n", chunks);
    assert_int_equal(chunks, 0);
    assert_int_equal(agent_applied(), 1);
    /* A genuine one is fetched and goes live. */
    forge(&announced, &env.key, 2, 2, "genuine v2, fetched by chunks");
    chunks = chunks_until_counted("popcast_agent_caught_up_entries_total");
    forged_free(&announced);
    memset(&announced, 0, sizeof(announced));
    assert_true(chunks >= 1);
    assert_int_equal(agent_applied(), 2);
    assert_true(pc_test_wait_version(&agent, "acme", 2, PC_TEST_CONVERGE_TIMEOUT_MS));
}

/* A catch-up answer with a refusal inside a group: the genuine seq 3,
 * a tampered seq 4 (both with their bundles: they go to the applier as
 * one group), then an announced seq 5, genuine. Nothing after a refused
 * entry can apply (seqs must follow), so the agent must not fetch the
 * announced one's bundle. Before, a group's refusal did not stop the
 * answer: each round fetched the bundle (up to max_bundle), only to
 * refuse it as a gap. */
static forged refused_group[3];

static nng_msg *answer_refusal_in_a_group(fake_sync *f, const Popcast__SyncCall *call)
{
    (void)f;
    if (call->body_case != POPCAST__SYNC_CALL__BODY_SYNC)
        return garbage(); /* a chunk request: counted, never served */
    Popcast__SyncReply r = POPCAST__SYNC_REPLY__INIT;
    Popcast__SyncResponse sync = POPCAST__SYNC_RESPONSE__INIT;
    Popcast__Entry e[3], *entries[3];
    for (int i = 0; i < 3; i++) {
        popcast__entry__init(&e[i]);
        e[i].signed_ = &refused_group[i].sm;
        entries[i] = &e[i];
    }
    for (int i = 0; i < 2; i++) {
        e[i].bundle.data = refused_group[i].bundle;
        e[i].bundle.len = refused_group[i].len;
    }
    e[2].bundle_omitted = 1;
    sync.head_seq = 5;
    sync.entries = entries;
    sync.n_entries = 3;
    r.body_case = POPCAST__SYNC_REPLY__BODY_SYNC;
    r.sync = &sync;
    return packed_reply(&r);
}

static void test_refusal_in_a_group_stops_the_answer(void **state)
{
    (void)state;
    uint64_t at = agent_applied();
    forge(&refused_group[0], &env.key, at + 1, at + 1, "genuine, before the refusal");
    forge(&refused_group[1], &env.key, at + 2, at + 2, "tampered");
    refused_group[1].sm.signature.data[0] ^= 1;
    forge(&refused_group[2], &env.key, at + 3, at + 3, "genuine, announced");
    uint64_t refused0 =
        pc_test_agent_metric(&agent, "popcast_agent_refused_total{reason=\"bad_signature\"}");
    int chunks0 = atomic_load(&fake.n_chunk);
    int syncs0 = atomic_load(&fake.n_sync);
    fake_set(&fake, answer_refusal_in_a_group);
    /* The agent asks again only once it is done with an answer (chunk
     * requests included): two asks mean the first answer was handled. */
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (atomic_load(&fake.n_sync) < syncs0 + 2 && pc_test_now_ms() < deadline)
        pc_test_sleep_ms(20);
    fake_set(&fake, answer_errors);
    assert_true(atomic_load(&fake.n_sync) >= syncs0 + 2);
    int chunks = atomic_load(&fake.n_chunk) - chunks0;
    fprintf(stderr, "a refusal in a group, then an announcement: %d chunks asked for\n", chunks);
    assert_int_equal(chunks, 0);
    assert_true(pc_test_agent_metric(
                    &agent, "popcast_agent_refused_total{reason=\"bad_signature\"}") > refused0);
    assert_int_equal(agent_applied(), at + 1);
    assert_true(pc_test_wait_version(&agent, "acme", at + 1, PC_TEST_CONVERGE_TIMEOUT_MS));
    for (int i = 0; i < 3; i++)
        forged_free(&refused_group[i]);
}

/* Snapshots. A real controller holds the root (env.key) and K2; the fake
 * sits between it and a fresh agent, honest (a proxy) or lying. */

#define CLAIMED_SEQ 1000000000ull

static pc_test_controller ctl;
static pc_signing_key k2, stranger;
static char k2_secret[400], k2_pub[400];
static Popcast__SyncReply *old_snapshot; /* taken before the rotation */
static const char *const controller_extra[] = {"--signing-key", k2_secret, NULL};

static nng_msg *answer_proxy(fake_sync *f, const Popcast__SyncCall *call)
{
    (void)call;
    return forward(f);
}

/* "Snapshot required", whatever the agent asks. */
static nng_msg *snapshot_required(void)
{
    Popcast__SyncReply r = POPCAST__SYNC_REPLY__INIT;
    Popcast__SyncResponse sync = POPCAST__SYNC_RESPONSE__INIT;
    sync.head_seq = CLAIMED_SEQ;
    sync.snapshot_required = 1;
    r.body_case = POPCAST__SYNC_REPLY__BODY_SYNC;
    r.sync = &sync;
    return packed_reply(&r);
}

/* The genuine snapshot taken before the rotation, replayed with a seq of
 * one billion in the reply (its assertion, if any, untouched). */
static nng_msg *answer_replayed_snapshot(fake_sync *f, const Popcast__SyncCall *call)
{
    (void)f;
    if (call->body_case != POPCAST__SYNC_CALL__BODY_SNAPSHOT)
        return snapshot_required();
    uint64_t seq = old_snapshot->snapshot->seq;
    old_snapshot->snapshot->seq = CLAIMED_SEQ;
    nng_msg *msg = packed_reply(old_snapshot);
    old_snapshot->snapshot->seq = seq;
    return msg;
}

/* The controller's current snapshot with a seq of one billion and an
 * assertion for it, signed in turn by the current key K2 (a key holder:
 * only the heartbeats' head shows the lie), by the revoked root key, by a
 * stranger, and by K2 but with a flipped signature byte. */
static nng_msg *answer_signed_lie(fake_sync *f, const Popcast__SyncCall *call)
{
    if (call->body_case != POPCAST__SYNC_CALL__BODY_SNAPSHOT)
        return snapshot_required();
    nng_msg *genuine = forward(f);
    if (genuine == NULL)
        return NULL;
    Popcast__SyncReply *r =
        popcast__sync_reply__unpack(NULL, nng_msg_len(genuine), nng_msg_body(genuine));
    nng_msg_free(genuine);
    assert_non_null(r);
    assert_int_equal(r->body_case, POPCAST__SYNC_REPLY__BODY_SNAPSHOT);
    Popcast__SnapshotResponse *snap = r->snapshot;
    uint8_t rot[PC_HASH_LEN], ten[PC_HASH_LEN];
    pc_envelope_snapshot_digest(snap->rotations, snap->n_rotations, rot);
    pc_envelope_snapshot_digest(snap->tenants, snap->n_tenants, ten);
    Popcast__SnapshotAssertion a = POPCAST__SNAPSHOT_ASSERTION__INIT;
    a.seq = CLAIMED_SEQ;
    a.head_seq = CLAIMED_SEQ;
    a.rotations_digest = (ProtobufCBinaryData){PC_HASH_LEN, rot};
    a.tenants_digest = (ProtobufCBinaryData){PC_HASH_LEN, ten};
    a.time_unix_ms = pc_wall_ms();
    int kind = f->state++ % 4;
    const pc_signing_key *signer = kind == 1 ? &env.key : kind == 2 ? &stranger : &k2;
    Popcast__SignedSnapshotAssertion sa;
    assert_int_equal(pc_envelope_sign_snapshot(signer, &a, &sa, NULL), PC_OK);
    if (kind == 3)
        sa.signature.data[7] ^= 1;
    Popcast__SignedSnapshotAssertion *genuine_sa = snap->assertion;
    snap->assertion = &sa;
    snap->seq = CLAIMED_SEQ;
    nng_msg *msg = packed_reply(r);
    snap->assertion = genuine_sa;
    popcast__sync_reply__free_unpacked(r, NULL);
    free(sa.assertion.data);
    free(sa.signature.data);
    free(sa.key_id.data);
    return msg;
}

static void deploy_app(const char *text)
{
    char src[256];
    pc_test_lua_hello(src, sizeof(src), text);
    pc_test_deploy_lua(&env, &ctl, "app", src);
}

/* One snapshot straight from the controller. */
static Popcast__SyncReply *take_snapshot(void)
{
    nng_socket req;
    assert_int_equal(nng_req0_open(&req), 0);
    assert_int_equal(nng_socket_set_ms(req, NNG_OPT_RECVTIMEO, 10000), 0);
    assert_int_equal(nng_socket_set_size(req, NNG_OPT_RECVMAXSZ, 256 << 20), 0);
    assert_int_equal(nng_dial(req, ctl.sync_url, NULL, 0), 0);
    Popcast__SnapshotRequest sreq = POPCAST__SNAPSHOT_REQUEST__INIT;
    sreq.agent_id = "test";
    Popcast__SyncCall c = POPCAST__SYNC_CALL__INIT;
    c.body_case = POPCAST__SYNC_CALL__BODY_SNAPSHOT;
    c.snapshot = &sreq;
    uint8_t buf[256];
    size_t len = popcast__sync_call__pack(&c, buf);
    assert_int_equal(nng_send(req, buf, len, 0), 0);
    nng_msg *rep = NULL;
    assert_int_equal(nng_recvmsg(req, &rep, 0), 0);
    Popcast__SyncReply *r = popcast__sync_reply__unpack(NULL, nng_msg_len(rep), nng_msg_body(rep));
    nng_msg_free(rep);
    nng_close(req);
    assert_non_null(r);
    assert_int_equal(r->body_case, POPCAST__SYNC_REPLY__BODY_SNAPSHOT);
    assert_string_equal(r->snapshot->error, "");
    return r;
}

static uint64_t controller_head(void)
{
    pc_http_result r;
    assert_int_equal(pc_test_api(&env, &ctl, "GET", "/v1/health", NULL, NULL, 0, &r), 200);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    uint64_t head = (uint64_t)json_integer_value(json_object_get(doc, "head_seq"));
    json_decref(doc);
    pc_http_result_free(&r);
    return head;
}

static void expect_signing_key(const pc_signing_key *k)
{
    char want[PC_HEX_KEY_ID_LEN];
    pc_hex(want, k->pub.id, PC_KEY_ID_LEN);
    json_t *st = pc_test_agent_status(&agent);
    assert_non_null(st);
    const char *got = json_string_value(json_object_get(st, "signing_key"));
    if (got == NULL || strcmp(got, want) != 0)
        fail_msg("the agent's signing key is %s, not %s", got ? got : "(roots)", want);
    json_decref(st);
}

/* Offers the lie until the fake served `times` snapshots with it. */
static void offer(fake_answer lie, int times)
{
    int before = atomic_load(&fake.n_snapshot);
    fake_set(&fake, lie);
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (atomic_load(&fake.n_snapshot) < before + times && pc_test_now_ms() < deadline)
        pc_test_sleep_ms(20);
    fake_set(&fake, answer_proxy);
    assert_true(atomic_load(&fake.n_snapshot) >= before + times);
}

/* A controller with the root key and K2; v1 by the root; the snapshot as
 * of then kept; the rotation to K2; v2 by K2. */
static int setup_snapshots(void **state)
{
    (void)state;
    pc_test_env_init(&env);
    memset(&agent, 0, sizeof(agent));
    memset(&ctl, 0, sizeof(ctl));
    pc_err err;
    assert_int_equal(pc_keygen(&k2), PC_OK);
    assert_int_equal(pc_keygen(&stranger), PC_OK);
    snprintf(k2_secret, sizeof(k2_secret), "%s/k2.key", env.root);
    snprintf(k2_pub, sizeof(k2_pub), "%s/k2.pub", env.root);
    assert_int_equal(pc_key_write_secret(k2_secret, &k2, &err), PC_OK);
    assert_int_equal(pc_key_write_public(k2_pub, &k2.pub, &err), PC_OK);
    pc_test_controller_start(&env, &ctl, controller_extra);
    deploy_app("v1 by the root");
    old_snapshot = take_snapshot();
    char out[2048];
    const char *args[] = {"key", "rotate", k2_pub, NULL};
    if (pc_test_cli(&env, &ctl, args, out, sizeof(out)) != 0)
        fail_msg("key rotate failed: %s", out);
    deploy_app("v2 by k2");
    fake_start(&fake, answer_proxy);
    fake_upstream(&fake, ctl.sync_url);
    return 0;
}

static int teardown_snapshots(void **state)
{
    (void)state;
    pc_test_agent_stop(&agent);
    fake_stop(&fake);
    pc_test_controller_stop(&ctl);
    if (old_snapshot != NULL)
        popcast__sync_reply__free_unpacked(old_snapshot, NULL);
    pc_test_env_cleanup(&env);
    return 0;
}

static void test_snapshot_seq_is_signed(void **state)
{
    (void)state;
    /* A fresh agent whose only sync endpoint replays the old snapshot (its
     * key chain stops at the root key, revoked since) claiming seq 10^9:
     * taken, it would serve v1 and ignore every later entry for good. */
    fake_set(&fake, answer_replayed_snapshot);
    const char *subs[] = {ctl.pub_url, NULL};
    const char *syncs[] = {fake.url, NULL};
    const char *extra[] = {"--sync-interval-ms", "300", NULL};
    pc_test_agent_start(&env, &agent, "fresh", subs, syncs, extra);
    offer(answer_replayed_snapshot, 2);
    uint64_t applied = agent_applied();
    fprintf(stderr, "after the replayed snapshot the agent's applied seq is %llu\n",
            (unsigned long long)applied);
    assert_true(applied < CLAIMED_SEQ);
    assert_true(pc_test_agent_metric(&agent, "popcast_agent_refused_total{reason=\"invalid\"}") >
                0);
    /* Honest again: it takes the real snapshot, with the whole chain. */
    pc_test_wait_converged(&env, &ctl, &agent, 1);
    assert_int_equal(agent_applied(), controller_head());
    expect_signing_key(&k2);
}

static void test_snapshot_beyond_the_heartbeat_head(void **state)
{
    (void)state;
    /* The agent follows the controller (through the fake, honest) and its
     * heartbeats. Now snapshots claiming seq 10^9: signed by the current
     * key, by the revoked one, by a stranger, and tampered. */
    uint64_t head = controller_head();
    assert_int_equal(agent_applied(), head);
    /* ... once it has a heartbeat's head to hold them against (before its
     * first one, an agent has only the assertion's signature). */
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (;;) {
        json_t *st = pc_test_agent_status(&agent);
        uint64_t hb_head = (uint64_t)json_integer_value(json_object_get(st, "head_seq"));
        json_decref(st);
        if (hb_head == head)
            break;
        if (pc_test_now_ms() > deadline)
            fail_msg("the agent accepted no heartbeat");
        pc_test_sleep_ms(20);
    }
    offer(answer_signed_lie, 4);
    uint64_t applied = agent_applied();
    fprintf(stderr, "after 4 signed lies the agent's applied seq is %llu (head %llu)\n",
            (unsigned long long)applied, (unsigned long long)head);
    assert_int_equal(applied, head);
    /* Not frozen: the next deploy goes live. */
    deploy_app("v3 by k2");
    pc_test_wait_converged(&env, &ctl, &agent, 1);
    assert_int_equal(agent_applied(), controller_head());
    expect_signing_key(&k2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lying_endpoint_is_asked_at_a_bounded_rate),
        cmocka_unit_test(test_announcement_verified_before_any_fetch),
        cmocka_unit_test(test_refusal_in_a_group_stops_the_answer),
    };
    const struct CMUnitTest snapshots[] = {
        cmocka_unit_test(test_snapshot_seq_is_signed),
        cmocka_unit_test(test_snapshot_beyond_the_heartbeat_head),
    };
    int failed = cmocka_run_group_tests(tests, setup, teardown);
    return failed + cmocka_run_group_tests(snapshots, setup_snapshots, teardown_snapshots);
}
