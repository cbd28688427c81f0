/* trust.c - root keys and the rotation schedule (see trust.h). */
#include "trust.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"

void pc_trust_init(pc_trust *t, const pc_keyring *roots)
{
    memset(t, 0, sizeof(*t));
    if (roots != NULL)
        t->roots = *roots;
}

void pc_trust_free(pc_trust *t)
{
    free(t->rotations);
    t->rotations = NULL;
    t->n = t->cap = 0;
}

int pc_trust_copy(pc_trust *dst, const pc_trust *src, pc_err *err)
{
    pc_trust_rotation *r = NULL;
    if (src->n > 0) {
        r = malloc(src->n * sizeof(*r));
        if (r == NULL)
            return pc_err_set(err, PC_E_NOMEM, "out of memory");
        memcpy(r, src->rotations, src->n * sizeof(*r));
    }
    free(dst->rotations);
    dst->roots = src->roots;
    dst->rotations = r;
    dst->n = dst->cap = src->n;
    return PC_OK;
}

static int same_key(const pc_public_key *a, const pc_public_key *b)
{
    return memcmp(a->pk, b->pk, PC_PK_LEN) == 0;
}

static int is_root(const pc_trust *t, const pc_public_key *k)
{
    for (size_t i = 0; i < t->roots.count; i++)
        if (same_key(&t->roots.keys[i], k))
            return 1;
    return 0;
}

/* Any key the schedule has ever named, by the unsigned id hint. Which of
 * them may sign what is decided after the signature verified. */
static const pc_public_key *known_key(const pc_trust *t, const uint8_t *id, size_t id_len)
{
    const pc_public_key *k = pc_keyring_find(&t->roots, id, id_len);
    for (size_t i = t->n; k == NULL && i > 0; i--)
        if (id_len == PC_KEY_ID_LEN && memcmp(t->rotations[i - 1].next.id, id, id_len) == 0)
            k = &t->rotations[i - 1].next;
    return k;
}

/* The rotation in force at seq (the last one before it), or NULL. */
static const pc_trust_rotation *in_force(const pc_trust *t, uint64_t seq)
{
    const pc_trust_rotation *r = NULL;
    for (size_t i = 0; i < t->n && t->rotations[i].seq < seq; i++)
        r = &t->rotations[i];
    return r;
}

const pc_public_key *pc_trust_current(const pc_trust *t)
{
    return t->n > 0 ? &t->rotations[t->n - 1].next : NULL;
}

/* Rule 3, offline path: a rotation signed by its own next key and carrying
 * a root key's authorization to replace exactly the key in force at its
 * seq. The authorization is verified before anything it names is used. */
/* A rotation to the key already in force changes nothing but the log; it
 * is refused so that a replayed permission cannot pass as one. */
static int rotation_changes_key(const pc_trust_rotation *r, const Popcast__Manifest *m, pc_err *err)
{
    if (m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION && r != NULL &&
        memcmp(m->next_public_key.data, r->next.pk, PC_PK_LEN) == 0)
        return pc_err_set(err, PC_E_INVALID, "seq %llu rotates to the key already in force",
                          (unsigned long long)m->seq);
    return PC_OK;
}

static int verify_authorized(const pc_trust *t, const Popcast__Entry *e, size_t max_bundle,
                             Popcast__Manifest **out, pc_err *err)
{
    Popcast__RotationAuthorization *a = NULL;
    int rc = pc_envelope_verify_authorization(&t->roots, e->signed_->root_authorization, &a, err);
    if (rc != PC_OK)
        return rc;
    pc_keyring one = {.count = 1};
    memcpy(one.keys[0].pk, a->next_public_key.data, PC_PK_LEN);
    pc_key_id(one.keys[0].id, one.keys[0].pk);
    uint8_t replaces[PC_KEY_ID_LEN];
    memcpy(replaces, a->replaces_key_id.data, PC_KEY_ID_LEN);
    popcast__rotation_authorization__free_unpacked(a, NULL);
    Popcast__Manifest *m = NULL;
    if ((rc = pc_envelope_verify_entry(&one, e, max_bundle, &m, err)) != PC_OK)
        return rc;
    const pc_trust_rotation *r = in_force(t, m->seq);
    if (m->kind != POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION ||
        memcmp(m->next_public_key.data, one.keys[0].pk, PC_PK_LEN) != 0) {
        rc = pc_err_set(err, PC_E_UNTRUSTED_KEY,
                        "a root authorization only covers the rotation to the key it names");
    } else if (r != NULL ? memcmp(r->next.id, replaces, PC_KEY_ID_LEN) != 0
                         : pc_keyring_find(&t->roots, replaces, PC_KEY_ID_LEN) == NULL) {
        /* Bound to the key it replaces: it cannot be replayed later. */
        rc = pc_err_set(err, PC_E_UNTRUSTED_KEY,
                        "the root authorization replaces another key than the one current at "
                        "seq %llu",
                        (unsigned long long)m->seq);
    } else {
        rc = rotation_changes_key(r, m, err);
    }
    if (rc != PC_OK) {
        popcast__manifest__free_unpacked(m, NULL);
        return rc;
    }
    *out = m;
    return PC_OK;
}

int pc_trust_verify_entry(const pc_trust *t, const Popcast__Entry *e, size_t max_bundle,
                          Popcast__Manifest **out, pc_err *err)
{
    *out = NULL;
    if (e == NULL || e->signed_ == NULL)
        return pc_err_set(err, PC_E_INVALID, "entry has no manifest");
    const pc_public_key *key = known_key(t, e->signed_->key_id.data, e->signed_->key_id.len);
    if (key == NULL) {
        if (e->signed_->root_authorization != NULL)
            return verify_authorized(t, e, max_bundle, out, err);
        return pc_err_set(err, PC_E_UNTRUSTED_KEY, "manifest signed by an unknown key");
    }
    pc_keyring one = {.count = 1};
    one.keys[0] = *key;
    Popcast__Manifest *m = NULL;
    int rc = pc_envelope_verify_entry(&one, e, max_bundle, &m, err);
    if (rc != PC_OK)
        return rc;
    const pc_trust_rotation *r = in_force(t, m->seq);
    int allowed = r != NULL ? same_key(&r->next, key) : is_root(t, key);
    if (!allowed && m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION)
        allowed = is_root(t, key); /* rule 3: the emergency path */
    if (!allowed && m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION &&
        e->signed_->root_authorization != NULL) {
        /* A known key (say, one used before) rotated to with a root's
         * authorization. */
        popcast__manifest__free_unpacked(m, NULL);
        return verify_authorized(t, e, max_bundle, out, err);
    }
    if (!allowed) {
        char kid[PC_HEX_KEY_ID_LEN];
        pc_hex(kid, key->id, PC_KEY_ID_LEN);
        if (r != NULL) {
            char cur[PC_HEX_KEY_ID_LEN];
            pc_hex(cur, r->next.id, PC_KEY_ID_LEN);
            rc = pc_err_set(err, PC_E_UNTRUSTED_KEY,
                            "seq %llu is signed by key %s, which may not sign it since the "
                            "rotation at seq %llu (entries after it must be signed by %s)",
                            (unsigned long long)m->seq, kid, (unsigned long long)r->seq, cur);
        } else {
            rc = pc_err_set(err, PC_E_UNTRUSTED_KEY,
                            "seq %llu is signed by key %s, which is not announced before it",
                            (unsigned long long)m->seq, kid);
        }
        popcast__manifest__free_unpacked(m, NULL);
        return rc;
    }
    if ((rc = rotation_changes_key(r, m, err)) != PC_OK) {
        popcast__manifest__free_unpacked(m, NULL);
        return rc;
    }
    *out = m;
    return PC_OK;
}

int pc_trust_verify_heartbeat(const pc_trust *t, const Popcast__SignedHeartbeat *sh,
                              Popcast__Heartbeat **out, pc_err *err)
{
    const pc_public_key *cur = pc_trust_current(t);
    if (cur == NULL)
        return pc_envelope_verify_heartbeat(&t->roots, sh, out, err);
    pc_keyring one = {.count = 1};
    one.keys[0] = *cur;
    return pc_envelope_verify_heartbeat(&one, sh, out, err);
}

int pc_trust_verify_snapshot(const pc_trust *t, const Popcast__SignedSnapshotAssertion *sa,
                             Popcast__SnapshotAssertion **out, pc_err *err)
{
    const pc_public_key *cur = pc_trust_current(t);
    if (cur == NULL)
        return pc_envelope_verify_snapshot(&t->roots, sa, out, err);
    pc_keyring one = {.count = 1};
    one.keys[0] = *cur;
    return pc_envelope_verify_snapshot(&one, sa, out, err);
}

int pc_trust_advance(pc_trust *t, const Popcast__Manifest *m, pc_err *err)
{
    if (m->kind != POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION ||
        m->next_public_key.len != PC_PK_LEN)
        return pc_err_set(err, PC_E_INVALID, "not a key rotation");
    if (t->n > 0 && m->seq <= t->rotations[t->n - 1].seq)
        return pc_err_set(err, PC_E_INVALID, "rotation at seq %llu is not after the one at %llu",
                          (unsigned long long)m->seq,
                          (unsigned long long)t->rotations[t->n - 1].seq);
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 4;
        pc_trust_rotation *grown = realloc(t->rotations, cap * sizeof(*grown));
        if (grown == NULL)
            return pc_err_set(err, PC_E_NOMEM, "out of memory");
        t->rotations = grown;
        t->cap = cap;
    }
    pc_trust_rotation *r = &t->rotations[t->n++];
    r->seq = m->seq;
    memcpy(r->next.pk, m->next_public_key.data, PC_PK_LEN);
    pc_key_id(r->next.id, r->next.pk);
    return PC_OK;
}

int pc_trust_advance_signed(pc_trust *t, const Popcast__SignedManifest *sm, Popcast__Manifest **out,
                            pc_err *err)
{
    if (out != NULL)
        *out = NULL;
    Popcast__Entry e = POPCAST__ENTRY__INIT;
    e.signed_ = (Popcast__SignedManifest *)sm;
    e.bundle_omitted = 1; /* a rotation has none; anything else is refused below */
    Popcast__Manifest *m = NULL;
    int rc = pc_trust_verify_entry(t, &e, SIZE_MAX, &m, err);
    if (rc == PC_OK)
        rc = pc_trust_advance(t, m, err);
    if (rc != PC_OK) {
        /* The seq it claims, for the message only: nothing else of an
         * unverified manifest is used. */
        Popcast__Manifest *claimed =
            m != NULL || sm == NULL
                ? NULL
                : popcast__manifest__unpack(NULL, sm->manifest.len, sm->manifest.data);
        uint64_t seq = m != NULL ? m->seq : claimed != NULL ? claimed->seq : 0;
        pc_err_wrap(err, "key rotation at seq %llu", (unsigned long long)seq);
        if (claimed != NULL)
            popcast__manifest__free_unpacked(claimed, NULL);
        if (m != NULL)
            popcast__manifest__free_unpacked(m, NULL);
        return rc;
    }
    if (out != NULL)
        *out = m;
    else
        popcast__manifest__free_unpacked(m, NULL);
    return PC_OK;
}

int pc_trust_extends(const pc_trust *a, const pc_trust *b)
{
    if (b->n < a->n)
        return 0;
    for (size_t i = 0; i < a->n; i++)
        if (a->rotations[i].seq != b->rotations[i].seq ||
            !same_key(&a->rotations[i].next, &b->rotations[i].next))
            return 0;
    return 1;
}
