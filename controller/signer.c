/* signer.c - held signing keys and the current one (see signer.h). */
#include "signer.h"

#include <stdlib.h>
#include <string.h>

#include "trust.h"

struct pc_signer {
    pc_store *store;
    pc_signing_key *keys;
    size_t n;
    pc_keyring roots;
};

int pc_signer_new(pc_signer **out, pc_store *store, const pc_signing_key *keys, size_t n,
                  const pc_keyring *roots, pc_err *err)
{
    *out = NULL;
    if (n == 0)
        return pc_err_set(err, PC_E_INVALID, "at least one signing key is required");
    pc_signer *s = calloc(1, sizeof(*s));
    if (s == NULL || (s->keys = calloc(n, sizeof(*s->keys))) == NULL) {
        free(s);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    memcpy(s->keys, keys, n * sizeof(*keys));
    s->n = n;
    s->store = store;
    if (roots != NULL && roots->count > 0)
        s->roots = *roots;
    else
        pc_keyring_add(&s->roots, &keys[0].pub, NULL);
    /* The chain must verify now: a controller that could not follow it
     * must not start. */
    int rc = pc_signer_foreach_rotation(s, NULL, NULL, err);
    if (rc != PC_OK) {
        pc_signer_free(s);
        return rc;
    }
    *out = s;
    return PC_OK;
}

void pc_signer_free(pc_signer *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n; i++)
        pc_signing_key_wipe(&s->keys[i]);
    free(s->keys);
    free(s);
}

typedef struct rotation_walk {
    int (*cb)(void *arg, uint64_t seq, const pc_public_key *next,
              const uint8_t signer_id[PC_KEY_ID_LEN], int64_t created_unix_ms);
    void *arg;
    pc_trust trust; /* the chain so far, from the roots */
    pc_err *err;
} rotation_walk;

static int rotation_item(void *arg, const Popcast__SignedManifest *sm)
{
    rotation_walk *w = arg;
    Popcast__Manifest *m = NULL;
    int rc = pc_trust_advance_signed(&w->trust, sm, &m, w->err);
    if (rc != PC_OK) {
        pc_err_wrap(w->err, "the key chain in the store does not verify from the root keys "
                            "(root_key; the agents' trusted_key)");
        return rc;
    }
    int stop = w->cb != NULL ? w->cb(w->arg, m->seq, pc_trust_current(&w->trust), m->key_id.data,
                                     m->created_unix_ms)
                             : 0;
    popcast__manifest__free_unpacked(m, NULL);
    return stop;
}

int pc_signer_foreach_rotation(pc_signer *s,
                               int (*cb)(void *arg, uint64_t seq, const pc_public_key *next,
                                         const uint8_t signer_id[PC_KEY_ID_LEN],
                                         int64_t created_unix_ms),
                               void *arg, pc_err *err)
{
    rotation_walk w = {cb, arg, {.rotations = NULL}, err};
    pc_trust_init(&w.trust, &s->roots);
    int rc = pc_store_foreach_rotation(s->store, rotation_item, &w, err);
    pc_trust_free(&w.trust);
    return rc;
}

typedef struct last_rotation {
    pc_public_key key;
    uint64_t seq;
} last_rotation;

static int keep_last(void *arg, uint64_t seq, const pc_public_key *next,
                     const uint8_t signer_id[PC_KEY_ID_LEN], int64_t created_unix_ms)
{
    (void)signer_id;
    (void)created_unix_ms;
    last_rotation *l = arg;
    l->key = *next;
    l->seq = seq;
    return 0;
}

int pc_signer_current_public(pc_signer *s, pc_public_key *out, uint64_t *since_seq, pc_err *err)
{
    last_rotation l = {.seq = 0};
    pc_err_clear(err);
    int rc = pc_signer_foreach_rotation(s, keep_last, &l, err);
    if (rc != PC_OK)
        return rc;
    if (since_seq != NULL)
        *since_seq = l.seq;
    if (l.seq != 0) {
        *out = l.key;
        return PC_OK;
    }
    /* Before any rotation agents accept only root keys: sign with a held
     * one, never with a key they would refuse. */
    for (size_t i = 0; i < s->n; i++) {
        if (pc_signer_is_root(s, s->keys[i].pub.pk)) {
            *out = s->keys[i].pub;
            return PC_OK;
        }
    }
    return pc_err_set(err, PC_E_UNAVAILABLE,
                      "no key rotation yet, and this controller holds none of the root keys: "
                      "make the first rotation with a root's offline authorization (popcast key "
                      "authorize ROOT.key NEXT.pub --replaces ROOT_KEY_ID)");
}

const pc_signing_key *pc_signer_held(pc_signer *s, const uint8_t pk[PC_PK_LEN])
{
    for (size_t i = 0; i < s->n; i++)
        if (memcmp(s->keys[i].pub.pk, pk, PC_PK_LEN) == 0)
            return &s->keys[i];
    return NULL;
}

int pc_signer_current(pc_signer *s, const pc_signing_key **out, pc_err *err)
{
    pc_public_key cur;
    int rc = pc_signer_current_public(s, &cur, NULL, err);
    if (rc != PC_OK)
        return rc;
    *out = pc_signer_held(s, cur.pk);
    if (*out == NULL) {
        char kid[PC_HEX_KEY_ID_LEN];
        pc_hex(kid, cur.id, PC_KEY_ID_LEN);
        return pc_err_set(err, PC_E_UNAVAILABLE,
                          "this controller does not hold the current signing key %s (add its "
                          "secret key file to signing_key)",
                          kid);
    }
    return PC_OK;
}

bool pc_signer_is_root_id(pc_signer *s, const uint8_t id[PC_KEY_ID_LEN])
{
    return pc_keyring_find(&s->roots, id, PC_KEY_ID_LEN) != NULL;
}

bool pc_signer_is_root(pc_signer *s, const uint8_t pk[PC_PK_LEN])
{
    for (size_t i = 0; i < s->roots.count; i++)
        if (memcmp(s->roots.keys[i].pk, pk, PC_PK_LEN) == 0)
            return true;
    return false;
}

const pc_keyring *pc_signer_roots(pc_signer *s)
{
    return &s->roots;
}
