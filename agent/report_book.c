/* report_book.c - whole and delta status reports (see report_book.h). */
#include "report_book.h"

#include <stdlib.h>
#include <string.h>

#include "applier.h"
#include "status_digest.h"
#include "strmap.h"

typedef struct tenant_mark {
    pc_status_digest hash;
    uint64_t changed_at; /* the generation its status last changed in */
    uint64_t seen_at;    /* the last generation that listed it */
} tenant_mark;

struct pc_report_book {
    Popcast__AgentStatus *whole; /* the latest generation, or NULL */
    uint64_t *changed_at;        /* per whole->tenants[i] */
    pc_strmap *marks;            /* tenant -> tenant_mark */
    pc_status_digest digest;
    /* Bases before this generation are void: a tenant left the table then
     * (or marks were lost to a failed allocation). */
    uint64_t epoch;
};

pc_report_book *pc_report_book_new(void)
{
    pc_report_book *b = calloc(1, sizeof(*b));
    if (b != NULL && (b->marks = pc_strmap_new()) == NULL) {
        free(b);
        b = NULL;
    }
    return b;
}

static void drop_whole(pc_report_book *b)
{
    if (b->whole != NULL) {
        free(b->whole->agent_id);
        free(b->whole->pop);
        if (b->whole->upstream != protobuf_c_empty_string)
            free(b->whole->upstream);
        b->whole->agent_id = b->whole->pop = b->whole->upstream = NULL;
        pc_applier_status_clear(b->whole);
        free(b->whole);
    }
    b->whole = NULL;
    free(b->changed_at);
    b->changed_at = NULL;
}

static void drop_marks(pc_report_book *b)
{
    size_t pos = 0;
    const char *key;
    void *val;
    while (pc_strmap_next(b->marks, &pos, &key, &val))
        free(val);
    pc_strmap_free(b->marks);
    b->marks = NULL;
}

void pc_report_book_free(pc_report_book *b)
{
    if (b == NULL)
        return;
    drop_whole(b);
    drop_marks(b);
    free(b);
}

uint64_t pc_report_book_counter(const pc_report_book *b)
{
    return b->whole != NULL ? b->whole->counter : 0;
}

/* Marks of tenants the new generation no longer lists go, and void every
 * base before it. */
static int forget_unseen(pc_report_book *b, uint64_t counter)
{
    pc_strmap *kept = pc_strmap_new();
    if (kept == NULL)
        return PC_E_NOMEM;
    size_t pos = 0;
    const char *key;
    void *val;
    int rc = PC_OK;
    while (pc_strmap_next(b->marks, &pos, &key, &val)) {
        tenant_mark *m = val;
        if (m->seen_at == counter && rc == PC_OK && pc_strmap_put(kept, key, m) == PC_OK)
            continue;
        if (m->seen_at == counter)
            rc = PC_E_NOMEM;
        free(m);
    }
    pc_strmap_free(b->marks);
    b->marks = kept;
    b->epoch = counter;
    return rc;
}

int pc_report_book_update(pc_report_book *b, Popcast__AgentStatus *whole)
{
    uint64_t counter = whole->counter;
    drop_whole(b);
    b->whole = whole;
    b->changed_at = calloc(whole->n_tenants ? whole->n_tenants : 1, sizeof(*b->changed_at));
    memset(&b->digest, 0, sizeof(b->digest));
    int rc = b->changed_at != NULL && b->marks != NULL ? PC_OK : PC_E_NOMEM;
    for (size_t i = 0; rc == PC_OK && i < whole->n_tenants; i++) {
        const Popcast__TenantStatus *t = whole->tenants[i];
        pc_status_digest h;
        if (!pc_status_digest_tenant(&h, t)) {
            rc = PC_E_NOMEM;
            break;
        }
        pc_status_digest_xor(&b->digest, &h);
        tenant_mark *m = pc_strmap_get(b->marks, t->tenant);
        if (m == NULL) {
            if ((m = calloc(1, sizeof(*m))) == NULL ||
                pc_strmap_put(b->marks, t->tenant, m) != PC_OK) {
                free(m);
                rc = PC_E_NOMEM;
                break;
            }
            m->hash = h;
            m->changed_at = counter;
        } else if (memcmp(&m->hash, &h, sizeof(h)) != 0) {
            m->hash = h;
            m->changed_at = counter;
        }
        m->seen_at = counter;
        b->changed_at[i] = m->changed_at;
    }
    if (rc == PC_OK && pc_strmap_count(b->marks) != whole->n_tenants)
        rc = forget_unseen(b, counter);
    if (rc != PC_OK) {
        /* Start over: every receiver gets the whole table next. */
        if (b->marks != NULL)
            drop_marks(b);
        b->marks = pc_strmap_new();
        b->epoch = counter + 1;
        free(b->changed_at);
        b->changed_at = NULL;
    }
    return rc;
}

int pc_report_book_renew(pc_report_book *b, Popcast__AgentStatus *header)
{
    Popcast__AgentStatus *was = b->whole;
    if (was == NULL || b->changed_at == NULL || header->n_tenants != 0 || header->n_nacks != 0)
        return PC_E_NOTFOUND;
    /* The lists move: marks, digest and changed_at describe them still. */
    header->tenants = was->tenants;
    header->n_tenants = was->n_tenants;
    header->nacks = was->nacks;
    header->n_nacks = was->n_nacks;
    was->tenants = NULL;
    was->n_tenants = 0;
    was->nacks = NULL;
    was->n_nacks = 0;
    uint64_t *changed_at = b->changed_at;
    b->changed_at = NULL;
    drop_whole(b);
    b->whole = header;
    b->changed_at = changed_at;
    return PC_OK;
}

int pc_report_book_pack(const pc_report_book *b, uint64_t base, const pc_signing_key *identity,
                        uint8_t **out, size_t *len, bool *delta)
{
    *out = NULL;
    *len = 0;
    *delta = false;
    if (b->whole == NULL)
        return PC_E_NOTFOUND;
    Popcast__AgentStatus st = *b->whole; /* shallow: lists are the book's */
    Popcast__TenantStatus **tenants = NULL;
    Popcast__Nack **nacks = NULL;
    if (base != 0 && base >= b->epoch && b->changed_at != NULL) {
        tenants = malloc((st.n_tenants ? st.n_tenants : 1) * sizeof(*tenants));
        nacks = malloc((st.n_nacks ? st.n_nacks : 1) * sizeof(*nacks));
        if (tenants == NULL || nacks == NULL) {
            free(tenants);
            free(nacks);
            return PC_E_NOMEM;
        }
        st.n_tenants = 0;
        for (size_t i = 0; i < b->whole->n_tenants; i++)
            if (b->changed_at[i] > base)
                tenants[st.n_tenants++] = b->whole->tenants[i];
        /* Nacks of the tenants listed only: the receiver keeps the others'. */
        st.n_nacks = 0;
        for (size_t i = 0; i < b->whole->n_nacks; i++) {
            const tenant_mark *m = pc_strmap_get(b->marks, b->whole->nacks[i]->tenant);
            if (m == NULL || m->changed_at > base)
                nacks[st.n_nacks++] = b->whole->nacks[i];
        }
        st.tenants = tenants;
        st.nacks = nacks;
        st.delta = true;
        st.base_counter = base;
        *delta = true;
    }
    st.tenants_digest.data = (uint8_t *)b->digest.b;
    st.tenants_digest.len = b->changed_at != NULL ? sizeof(b->digest.b) : 0;
    st.tenants_total = b->whole->n_tenants;

    Popcast__SyncCall c = POPCAST__SYNC_CALL__INIT;
    c.body_case = POPCAST__SYNC_CALL__BODY_STATUS;
    c.status = &st;
    /* Signed with the agent's own key: the counter inside the signed bytes
     * makes a replayed report useless, the key makes a forged one. */
    Popcast__SignedAgentStatus ss = POPCAST__SIGNED_AGENT_STATUS__INIT;
    uint8_t sig[PC_SIG_LEN];
    uint8_t *packed = NULL;
    int rc = PC_OK;
    if (identity != NULL) {
        size_t n = popcast__agent_status__get_packed_size(&st);
        if ((packed = malloc(n ? n : 1)) == NULL) {
            rc = PC_E_NOMEM;
        } else {
            popcast__agent_status__pack(&st, packed);
            pc_sign(identity, PC_DOMAIN_STATUS, packed, n, sig);
            ss.status.data = packed;
            ss.status.len = n;
            ss.signature.data = sig;
            ss.signature.len = PC_SIG_LEN;
            ss.key_id.data = (uint8_t *)identity->pub.id;
            ss.key_id.len = PC_KEY_ID_LEN;
            c.body_case = POPCAST__SYNC_CALL__BODY_SIGNED_STATUS;
            c.signed_status = &ss;
        }
    }
    if (rc == PC_OK) {
        size_t n = popcast__sync_call__get_packed_size(&c);
        if ((*out = malloc(n ? n : 1)) == NULL) {
            rc = PC_E_NOMEM;
        } else {
            popcast__sync_call__pack(&c, *out);
            *len = n;
        }
    }
    free(packed);
    free(tenants);
    free(nacks);
    if (rc != PC_OK)
        *delta = false;
    return rc;
}
