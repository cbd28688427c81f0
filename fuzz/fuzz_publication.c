/* fuzz_publication.c - what an agent does with bytes from pub/sub or from a
 * catch-up reply: decode, verify signatures, hashes and the key schedule
 * (rotations advance it, as in the applier), and walk what verified. Must
 * never crash, leak or read out of bounds. */
#include <stddef.h>
#include <stdint.h>

#include "bundle.h"
#include "envelope.h"
#include "fuzz.h"
#include "fuzz_key.h"
#include "popcast.pb-c.h"
#include "trust.h"

static pc_keyring ring;

static void check_entry(pc_trust *t, const Popcast__Entry *e)
{
    Popcast__Manifest *m = NULL;
    pc_err err;
    if (pc_trust_verify_entry(t, e, 64u << 20, &m, &err) == PC_OK) {
        if (m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION)
            (void)pc_trust_advance(t, m, &err);
        if (pc_manifest_has_content(m) && !e->bundle_omitted) {
            pc_bundle *b = NULL;
            if (pc_bundle_open(e->bundle.data, e->bundle.len, &b, &err) == PC_OK)
                pc_bundle_free(b);
        }
        popcast__manifest__free_unpacked(m, NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (ring.count == 0) {
        pc_crypto_init();
        pc_signing_key key;
        pc_fuzz_key(&key);
        pc_keyring_add(&ring, &key.pub, NULL);
    }
    /* Each input starts from the root keys alone. */
    pc_trust t;
    pc_trust_init(&t, &ring);
    Popcast__Publication *pub = popcast__publication__unpack(NULL, size, data);
    if (pub != NULL) {
        if (pub->body_case == POPCAST__PUBLICATION__BODY_ENTRY)
            check_entry(&t, pub->entry);
        if (pub->body_case == POPCAST__PUBLICATION__BODY_HEARTBEAT) {
            Popcast__Heartbeat *hb = NULL;
            pc_err err;
            if (pc_trust_verify_heartbeat(&t, pub->heartbeat, &hb, &err) == PC_OK)
                popcast__heartbeat__free_unpacked(hb, NULL);
        }
        popcast__publication__free_unpacked(pub, NULL);
    }
    Popcast__SyncReply *rep = popcast__sync_reply__unpack(NULL, size, data);
    if (rep != NULL) {
        if (rep->body_case == POPCAST__SYNC_REPLY__BODY_SYNC)
            for (size_t i = 0; i < rep->sync->n_entries; i++)
                check_entry(&t, rep->sync->entries[i]);
        if (rep->body_case == POPCAST__SYNC_REPLY__BODY_SNAPSHOT) {
            pc_trust chain;
            pc_trust_init(&chain, &ring);
            for (size_t i = 0; i < rep->snapshot->n_rotations; i++)
                check_entry(&chain, rep->snapshot->rotations[i]);
            (void)pc_trust_extends(&t, &chain);
            for (size_t i = 0; i < rep->snapshot->n_tenants; i++)
                check_entry(&chain, rep->snapshot->tenants[i]);
            pc_trust_free(&chain);
        }
        popcast__sync_reply__free_unpacked(rep, NULL);
    }
    pc_trust_free(&t);
    return 0;
}
