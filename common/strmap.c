/* strmap.c - string -> pointer hash map (see strmap.h). */
#include "strmap.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

#define MIN_CAP 8

typedef struct slot {
    char *key; /* NULL: empty */
    void *value;
    uint64_t hash;
} slot;

struct pc_strmap {
    slot *slots;
    size_t cap; /* 0 or a power of two */
    size_t count;
    pc_strmap_hash_fn hash; /* NULL: keyed SipHash */
    unsigned char seed[crypto_shorthash_KEYBYTES];
};

pc_strmap *pc_strmap_new_with_hash(pc_strmap_hash_fn hash)
{
    pc_strmap *m = calloc(1, sizeof(*m));
    if (m != NULL)
        m->hash = hash;
    return m;
}

pc_strmap *pc_strmap_new(void)
{
    /* Idempotent and thread safe; needed before randombytes. */
    if (sodium_init() < 0)
        return NULL;
    pc_strmap *m = pc_strmap_new_with_hash(NULL);
    if (m != NULL)
        randombytes_buf(m->seed, sizeof(m->seed));
    return m;
}

void pc_strmap_free(pc_strmap *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->cap; i++)
        free(m->slots[i].key);
    free(m->slots);
    free(m);
}

static uint64_t hash_of(const pc_strmap *m, const char *key, size_t len)
{
    if (m->hash != NULL)
        return m->hash(key, len);
    unsigned char out[crypto_shorthash_BYTES];
    crypto_shorthash(out, (const unsigned char *)key, len, m->seed);
    uint64_t h;
    memcpy(&h, out, sizeof(h));
    return h;
}

/* The slot holding key, or the empty slot ending its probe run. */
static size_t find(const pc_strmap *m, const char *key, uint64_t h)
{
    size_t mask = m->cap - 1;
    size_t i = (size_t)h & mask;
    while (m->slots[i].key != NULL && (m->slots[i].hash != h || strcmp(m->slots[i].key, key) != 0))
        i = (i + 1) & mask;
    return i;
}

static int grow(pc_strmap *m)
{
    size_t cap = m->cap ? m->cap * 2 : MIN_CAP;
    slot *slots = calloc(cap, sizeof(*slots));
    if (slots == NULL)
        return PC_E_NOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        if (m->slots[i].key == NULL)
            continue;
        size_t j = (size_t)m->slots[i].hash & (cap - 1);
        while (slots[j].key != NULL)
            j = (j + 1) & (cap - 1);
        slots[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    return PC_OK;
}

int pc_strmap_put(pc_strmap *m, const char *key, void *value)
{
    if (key == NULL || value == NULL)
        return PC_E_INVALID;
    uint64_t h = hash_of(m, key, strlen(key));
    if (m->cap > 0) {
        size_t i = find(m, key, h);
        if (m->slots[i].key != NULL) {
            m->slots[i].value = value;
            return PC_OK;
        }
    }
    char *copy = strdup(key);
    if (copy == NULL)
        return PC_E_NOMEM;
    /* At most half full: probe runs stay short. */
    if ((m->count + 1) * 2 > m->cap && grow(m) != PC_OK) {
        free(copy);
        return PC_E_NOMEM;
    }
    size_t i = find(m, key, h);
    m->slots[i] = (slot){.key = copy, .value = value, .hash = h};
    m->count++;
    return PC_OK;
}

void *pc_strmap_get(const pc_strmap *m, const char *key)
{
    if (key == NULL || m->count == 0)
        return NULL;
    size_t i = find(m, key, hash_of(m, key, strlen(key)));
    return m->slots[i].value; /* NULL in an empty slot */
}

void *pc_strmap_remove(pc_strmap *m, const char *key)
{
    if (key == NULL || m->count == 0)
        return NULL;
    size_t mask = m->cap - 1;
    size_t i = find(m, key, hash_of(m, key, strlen(key)));
    if (m->slots[i].key == NULL)
        return NULL;
    void *value = m->slots[i].value;
    free(m->slots[i].key);
    m->count--;
    /* Backward shift: move later members of the probe run into the hole
     * unless that would put them before their home slot. */
    for (size_t j = (i + 1) & mask; m->slots[j].key != NULL; j = (j + 1) & mask) {
        size_t home = (size_t)m->slots[j].hash & mask;
        bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (stays)
            continue;
        m->slots[i] = m->slots[j];
        i = j;
    }
    m->slots[i] = (slot){0};
    return value;
}

size_t pc_strmap_count(const pc_strmap *m)
{
    return m->count;
}

bool pc_strmap_next(const pc_strmap *m, size_t *pos, const char **key, void **value)
{
    for (size_t i = *pos; i < m->cap; i++) {
        if (m->slots[i].key != NULL) {
            *pos = i + 1;
            if (key != NULL)
                *key = m->slots[i].key;
            if (value != NULL)
                *value = m->slots[i].value;
            return true;
        }
    }
    *pos = m->cap;
    return false;
}
