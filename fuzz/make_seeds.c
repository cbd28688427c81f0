/* make_seeds.c - writes the seed corpora in fuzz/corpus/ (run by hand when
 * a wire format changes: make_seeds DIR). Seeds are valid messages signed
 * with the fuzz key, so fuzzing starts past the signature checks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bundle.h"
#include "envelope.h"
#include "fuzz_key.h"
#include "popcast.pb-c.h"

static const char *root;

static void put(const char *target, int n, const void *data, size_t len)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", root, target);
    mkdir(path, 0755);
    snprintf(path, sizeof(path), "%s/%s/seed-%02d", root, target, n);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, len, f) != len) {
        perror(path);
        exit(1);
    }
    fclose(f);
}

static void put_text(const char *target, int n, const char *text)
{
    put(target, n, text, strlen(text));
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: make_seeds fuzz/corpus\n");
        return 2;
    }
    root = argv[1];
    pc_crypto_init();
    pc_signing_key key;
    pc_fuzz_key(&key);

    /* A bundle with two files. */
    Popcast__BundleFile f1 = POPCAST__BUNDLE_FILE__INIT, f2 = POPCAST__BUNDLE_FILE__INIT;
    f1.path = "main.lua";
    f1.content.data = (uint8_t *)"return function(req) return 'hi' end";
    f1.content.len = strlen((char *)f1.content.data);
    f2.path = "lib/util.lua";
    f2.content.data = (uint8_t *)"return {}";
    f2.content.len = 9;
    Popcast__BundleFile *files[] = {&f1, &f2};
    Popcast__BundleArchive a = POPCAST__BUNDLE_ARCHIVE__INIT;
    a.entrypoint = "main.lua";
    a.files = files;
    a.n_files = 2;
    size_t blen = popcast__bundle_archive__get_packed_size(&a);
    uint8_t *bundle = malloc(blen);
    popcast__bundle_archive__pack(&a, bundle);
    put("fuzz_bundle", 1, bundle, blen);
    uint8_t *single = NULL;
    size_t slen = 0;
    pc_bundle_pack_single("main.lua", (const uint8_t *)"return 1", 8, &single, &slen, NULL);
    put("fuzz_bundle", 2, single, slen);
    free(single);

    /* A signed deploy entry and a heartbeat, as publications. */
    uint8_t hash[PC_HASH_LEN];
    pc_hash(hash, bundle, blen);
    Popcast__Manifest m = POPCAST__MANIFEST__INIT;
    m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY;
    m.tenant = "acme";
    m.version = 3;
    m.seq = 7;
    m.bundle_hash.data = hash;
    m.bundle_hash.len = PC_HASH_LEN;
    m.bundle_size = blen;
    m.entrypoint = "main.lua";
    m.runtime = "lua";
    Popcast__SignedManifest sm;
    pc_envelope_sign_manifest(&key, &m, &sm, NULL);
    Popcast__Entry e = POPCAST__ENTRY__INIT;
    e.signed_ = &sm;
    e.bundle.data = bundle;
    e.bundle.len = blen;
    Popcast__Publication pub = POPCAST__PUBLICATION__INIT;
    pub.body_case = POPCAST__PUBLICATION__BODY_ENTRY;
    pub.entry = &e;
    uint8_t buf[8192];
    size_t n = popcast__publication__pack(&pub, buf);
    put("fuzz_publication", 1, buf, n);
    Popcast__Heartbeat hb = POPCAST__HEARTBEAT__INIT;
    hb.head_seq = 7;
    hb.time_unix_ms = 1795443421062;
    hb.expires_unix_ms = 1795443451062;
    hb.controller_id = "c1";
    Popcast__SignedHeartbeat sh;
    pc_envelope_sign_heartbeat(&key, &hb, &sh, NULL);
    pub.body_case = POPCAST__PUBLICATION__BODY_HEARTBEAT;
    pub.heartbeat = &sh;
    n = popcast__publication__pack(&pub, buf);
    put("fuzz_publication", 2, buf, n);
    /* A catch-up reply with the entry, and one announcing it. */
    Popcast__Entry *entries[] = {&e};
    Popcast__SyncResponse sr = POPCAST__SYNC_RESPONSE__INIT;
    sr.entries = entries;
    sr.n_entries = 1;
    sr.head_seq = 7;
    Popcast__SyncReply rep = POPCAST__SYNC_REPLY__INIT;
    rep.body_case = POPCAST__SYNC_REPLY__BODY_SYNC;
    rep.sync = &sr;
    n = popcast__sync_reply__pack(&rep, buf);
    put("fuzz_publication", 3, buf, n);
    e.bundle_omitted = 1;
    e.bundle.len = 0;
    pub.body_case = POPCAST__PUBLICATION__BODY_ENTRY;
    pub.entry = &e;
    n = popcast__publication__pack(&pub, buf);
    put("fuzz_publication", 4, buf, n);
    /* A snapshot whose chain rotates from the fuzz key to a second key at
     * seq 5, with a tenant entry at seq 7 signed by the second key. */
    {
        pc_signing_key next;
        unsigned char seed[crypto_sign_SEEDBYTES];
        memset(seed, 0x6b, sizeof(seed));
        crypto_sign_seed_keypair(next.pub.pk, next.sk, seed);
        pc_key_id(next.pub.id, next.pub.pk);
        Popcast__Manifest rm = POPCAST__MANIFEST__INIT;
        rm.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION;
        rm.seq = 5;
        rm.next_public_key.data = next.pub.pk;
        rm.next_public_key.len = PC_PK_LEN;
        Popcast__SignedManifest rsm, tsm;
        pc_envelope_sign_manifest(&key, &rm, &rsm, NULL);
        pc_envelope_sign_manifest(&next, &m, &tsm, NULL);
        Popcast__Entry re = POPCAST__ENTRY__INIT, te = POPCAST__ENTRY__INIT;
        re.signed_ = &rsm;
        te.signed_ = &tsm;
        te.bundle.data = bundle;
        te.bundle.len = blen;
        Popcast__Entry *rots[] = {&re}, *tens[] = {&te};
        Popcast__SnapshotResponse snap = POPCAST__SNAPSHOT_RESPONSE__INIT;
        snap.seq = 7;
        snap.rotations = rots;
        snap.n_rotations = 1;
        snap.tenants = tens;
        snap.n_tenants = 1;
        Popcast__SyncReply srep = POPCAST__SYNC_REPLY__INIT;
        srep.body_case = POPCAST__SYNC_REPLY__BODY_SNAPSHOT;
        srep.snapshot = &snap;
        n = popcast__sync_reply__pack(&srep, buf);
        put("fuzz_publication", 5, buf, n);
        /* The same rotation signed by the next key with the root's offline
         * authorization, as a publication; and the authorization as an API
         * rotation body. */
        Popcast__RotationAuthorization ra = POPCAST__ROTATION_AUTHORIZATION__INIT;
        ra.next_public_key.data = next.pub.pk;
        ra.next_public_key.len = PC_PK_LEN;
        ra.replaces_key_id.data = key.pub.id;
        ra.replaces_key_id.len = PC_KEY_ID_LEN;
        Popcast__SignedRotationAuthorization sra;
        pc_envelope_sign_authorization(&key, &ra, &sra, NULL);
        Popcast__SignedManifest asm_;
        pc_envelope_sign_manifest(&next, &rm, &asm_, NULL);
        asm_.root_authorization = &sra;
        Popcast__Entry ae = POPCAST__ENTRY__INIT;
        ae.signed_ = &asm_;
        pub.body_case = POPCAST__PUBLICATION__BODY_ENTRY;
        pub.entry = &ae;
        n = popcast__publication__pack(&pub, buf);
        put("fuzz_publication", 6, buf, n);
        asm_.root_authorization = NULL;
        pc_envelope_signed_clear(&asm_);
        char *auth_text = NULL, next_text[100], body_text[1024];
        pc_authorization_format(&sra, &auth_text, NULL);
        pc_key_format_public(&next.pub, next_text, sizeof(next_text));
        snprintf(body_text, sizeof(body_text),
                 "\x04{\"next_public_key\": \"%s\", \"authorization\": \"%s\"}", next_text,
                 auth_text);
        put_text("fuzz_api_bodies", 6, body_text);
        free(auth_text);
        free(sra.authorization.data);
        free(sra.signature.data);
        free(sra.key_id.data);
        pc_envelope_signed_clear(&rsm);
        pc_envelope_signed_clear(&tsm);
    }

    /* A status report. */
    Popcast__TenantStatus ts = POPCAST__TENANT_STATUS__INIT;
    ts.tenant = "acme";
    ts.applied_version = 3;
    ts.live_version = 2;
    ts.applied_seq = 7;
    Popcast__TenantStatus *tss[] = {&ts};
    Popcast__Nack nack = POPCAST__NACK__INIT;
    nack.tenant = "acme";
    nack.version = 3;
    nack.seq = 7;
    nack.reason = "runtime_error";
    nack.detail = "main.lua:1: boom";
    Popcast__Nack *nacks[] = {&nack};
    Popcast__AgentStatus st = POPCAST__AGENT_STATUS__INIT;
    st.agent_id = "edge-1";
    st.pop = "fra";
    st.applied_seq = 7;
    st.tenants = tss;
    st.n_tenants = 1;
    st.nacks = nacks;
    st.n_nacks = 1;
    st.counter = 5;
    Popcast__SyncCall call = POPCAST__SYNC_CALL__INIT;
    call.body_case = POPCAST__SYNC_CALL__BODY_STATUS;
    call.status = &st;
    n = popcast__sync_call__pack(&call, buf);
    put("fuzz_sync_call", 1, buf, n);
    Popcast__SyncRequest req = POPCAST__SYNC_REQUEST__INIT;
    req.after_seq = 3;
    req.max_entries = 64;
    call.body_case = POPCAST__SYNC_CALL__BODY_SYNC;
    call.sync = &req;
    n = popcast__sync_call__pack(&call, buf);
    put("fuzz_sync_call", 2, buf, n);
    Popcast__TailRecord rec = POPCAST__TAIL_RECORD__INIT;
    rec.tenant = "acme";
    rec.version = 3;
    rec.kind = POPCAST__TAIL_KIND__TAIL_KIND_ERROR;
    rec.time_unix_ms = 1764806400000;
    rec.message = "main.lua:4: attempt to index a nil value";
    rec.method = "GET";
    rec.path = "/me";
    rec.status = 502;
    rec.duration_us = 95;
    Popcast__TailRecord *recs[] = {&rec};
    Popcast__TailDrop drop = POPCAST__TAIL_DROP__INIT;
    drop.tenant = "acme";
    drop.dropped = 12;
    drop.sampled_out = 400;
    Popcast__TailDrop *drops[] = {&drop};
    Popcast__TailBatch tb = POPCAST__TAIL_BATCH__INIT;
    tb.agent_id = "edge-1";
    tb.pop = "fra";
    tb.counter = 9;
    tb.records = recs;
    tb.n_records = 1;
    tb.drops = drops;
    tb.n_drops = 1;
    uint8_t tbuf[512];
    Popcast__SignedTailBatch stb = POPCAST__SIGNED_TAIL_BATCH__INIT;
    stb.batch.data = tbuf;
    stb.batch.len = popcast__tail_batch__pack(&tb, tbuf);
    call.body_case = POPCAST__SYNC_CALL__BODY_TAIL;
    call.tail = &stb;
    n = popcast__sync_call__pack(&call, buf);
    put("fuzz_sync_call", 3, buf, n);

    put_text("fuzz_config", 1,
             "{\"name\":\"x\",\"count\":7,\"size\":\"64MiB\",\"flag\":true,"
             "\"list\":[\"a\",\"b\"]}");
    put_text("fuzz_config", 2, "{\"count\": 1000, \"size\": 12}");
    put_text("fuzz_api_bodies", 1, "\x01{\"version\": 3}");
    put_text("fuzz_api_bodies", 2,
             "\x05{\"id\": 4, \"raft_address\": \"127.0.0.1:7073\", \"api_url\": "
             "\"http://127.0.0.1:7070\"}");
    put_text("fuzz_api_bodies", 3, "\x02{\"tenants\": [\"alpha\", \"beta\"], \"name\": \"ci\"}");
    put_text("fuzz_api_bodies", 8,
             "\xe0{\"version\": 3, \"plan\": [{\"pops\": [\"ams\"], \"bake_ms\": 60000, "
             "\"min_requests\": 100}, {\"permille\": 500, \"gate\": false}, {\"everyone\": true}], "
             "\"message\": \"canary first\"}");
    put_text("fuzz_api_bodies", 9,
             "\xd0{\"plan\": [{\"pops\": [\"ams\"], \"bake_ms\": 60000, \"min_requests\": 100}, "
             "{\"permille\": 500, \"split_permille\": 100, \"split_key\": \"cookie:session\"}, "
             "{\"everyone\": true, \"gate\": false}]}");
    put_text("fuzz_api_bodies", 7,
             "\xf0{\"pops\": [\"ams\"], \"agents\": [\"edge-1\"], \"permille\": 100, "
             "\"message\": \"canary\"}");
    {
        char text[256], pk_text[100];
        pc_key_format_public(&key.pub, pk_text, sizeof(pk_text));
        snprintf(text, sizeof(text), "\x03{\"agent_id\": \"edge-1\", \"public_key\": \"%s\"}",
                 pk_text);
        put_text("fuzz_api_bodies", 4, text);
        snprintf(text, sizeof(text), "\x04{\"next_public_key\": \"%s\", \"root_key\": \"%s\"}",
                 pk_text, pk_text);
        put_text("fuzz_api_bodies", 5, text);
    }
    put("fuzz_lua_pattern", 1, "key=value, k2=v2\0(%w+)=(%w+)\0%2=%1", 34);
    put("fuzz_lua_pattern", 2, "f(a(b)c)d\0%b()\0<%0>", 20);
    put("fuzz_lua_pattern", 3, "THE (quick) fox\0%f[%a]%a+\0W", 27);
    pc_envelope_signed_clear(&sm);
    free(sh.heartbeat.data);
    free(sh.signature.data);
    free(sh.key_id.data);
    free(bundle);
    return 0;
}
