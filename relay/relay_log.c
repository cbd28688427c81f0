/* relay_log.c - a relay's recent log in LMDB (invariants in relay_log.h). */
#include "relay_log.h"

#include <errno.h>
#include <inttypes.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "envelope.h"

struct pc_relay_log {
    pc_relay_log_options opt;
    MDB_env *env;
    MDB_dbi log, blobs, meta;
};

static int lmdb_err(pc_err *err, int mrc, const char *what)
{
    return pc_err_set(err, mrc == MDB_MAP_FULL ? PC_E_TOO_LARGE : PC_E_STORE, "relay log: %s: %s",
                      what, mdb_strerror(mrc));
}

int pc_relay_log_open(pc_relay_log **out, const char *dir, const pc_relay_log_options *opt,
                      pc_err *err)
{
    pc_relay_log *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    l->opt = *opt;
    if (l->opt.retain_entries == 0)
        l->opt.retain_entries = 1;
    int mrc = mdb_env_create(&l->env);
    if (mrc == 0)
        mrc = mdb_env_set_maxdbs(l->env, 4);
    if (mrc == 0)
        mrc = mdb_env_set_mapsize(l->env, (size_t)opt->map_size);
    if (mrc == 0)
        mrc = mdb_env_open(l->env, dir, MDB_NOTLS, 0600);
    MDB_txn *txn = NULL;
    if (mrc == 0)
        mrc = mdb_txn_begin(l->env, NULL, 0, &txn);
    if (mrc == 0)
        mrc = mdb_dbi_open(txn, "log", MDB_CREATE, &l->log);
    if (mrc == 0)
        mrc = mdb_dbi_open(txn, "blobs", MDB_CREATE, &l->blobs);
    if (mrc == 0)
        mrc = mdb_dbi_open(txn, "meta", MDB_CREATE, &l->meta);
    if (mrc == 0)
        mrc = mdb_txn_commit(txn);
    else if (txn != NULL)
        mdb_txn_abort(txn);
    if (mrc != 0) {
        int rc = pc_err_set(err, PC_E_STORE, "cannot open the relay log in %s: %s", dir,
                            mdb_strerror(mrc));
        pc_relay_log_close(l);
        return rc;
    }
    int dead = 0;
    mdb_reader_check(l->env, &dead);
    *out = l;
    return PC_OK;
}

void pc_relay_log_close(pc_relay_log *l)
{
    if (l == NULL)
        return;
    if (l->env != NULL)
        mdb_env_close(l->env);
    free(l);
}

static uint64_t meta_u64(MDB_txn *txn, MDB_dbi dbi, const char *key, uint64_t dflt)
{
    MDB_val k = {strlen(key), (void *)key}, v;
    if (mdb_get(txn, dbi, &k, &v) != 0 || v.mv_size != 8)
        return dflt;
    return pc_be64_get(v.mv_data);
}

static int put_u64(MDB_txn *txn, MDB_dbi dbi, const char *key, uint64_t val)
{
    uint8_t b[8];
    pc_be64_put(b, val);
    MDB_val k = {strlen(key), (void *)key}, v = {8, b};
    return mdb_put(txn, dbi, &k, &v, 0);
}

static void bounds_txn(pc_relay_log *l, MDB_txn *txn, uint64_t *first, uint64_t *head)
{
    *head = meta_u64(txn, l->meta, "head", 0);
    *first = meta_u64(txn, l->meta, "first", 1);
}

void pc_relay_log_bounds(pc_relay_log *l, uint64_t *first, uint64_t *head)
{
    MDB_txn *txn = NULL;
    *first = 1;
    *head = 0;
    if (mdb_txn_begin(l->env, NULL, MDB_RDONLY, &txn) != 0)
        return;
    bounds_txn(l, txn, first, head);
    mdb_txn_abort(txn);
}

static void rotation_key(char *buf, size_t cap, uint64_t seq)
{
    snprintf(buf, cap, "rot/%020" PRIu64, seq);
}

static int put_rotation(pc_relay_log *l, MDB_txn *txn, uint64_t seq,
                        const Popcast__SignedManifest *sm)
{
    size_t n = popcast__signed_manifest__get_packed_size(sm);
    uint8_t *buf = malloc(n ? n : 1);
    if (buf == NULL)
        return ENOMEM;
    popcast__signed_manifest__pack(sm, buf);
    char key[32];
    rotation_key(key, sizeof(key), seq);
    MDB_val k = {strlen(key), key}, v = {n, buf};
    int mrc = mdb_put(txn, l->meta, &k, &v, 0);
    free(buf);
    return mrc;
}

/* Drops the oldest entry (first < head): its bytes and blob index go. */
static int drop_first(pc_relay_log *l, MDB_txn *txn, uint64_t first, uint64_t *bytes)
{
    uint8_t kb[8];
    pc_be64_put(kb, first);
    MDB_val k = {8, kb}, v;
    int mrc = mdb_get(txn, l->log, &k, &v);
    if (mrc != 0)
        return mrc;
    *bytes = *bytes > v.mv_size ? *bytes - v.mv_size : 0;
    Popcast__Entry *e = popcast__entry__unpack(NULL, v.mv_size, v.mv_data);
    if (e != NULL && e->signed_ != NULL && e->bundle.len > 0) {
        Popcast__Manifest *m =
            popcast__manifest__unpack(NULL, e->signed_->manifest.len, e->signed_->manifest.data);
        if (m != NULL && m->bundle_hash.len == PC_HASH_LEN) {
            MDB_val hk = {PC_HASH_LEN, m->bundle_hash.data}, hv;
            /* Only if no newer entry carries the same bundle. */
            if (mdb_get(txn, l->blobs, &hk, &hv) == 0 && hv.mv_size == 8 &&
                pc_be64_get(hv.mv_data) == first)
                mdb_del(txn, l->blobs, &hk, NULL);
        }
        if (m != NULL)
            popcast__manifest__free_unpacked(m, NULL);
    }
    if (e != NULL)
        popcast__entry__free_unpacked(e, NULL);
    return mdb_del(txn, l->log, &k, NULL);
}

int pc_relay_log_append(pc_relay_log *l, const Popcast__Entry *e, const Popcast__Manifest *m,
                        pc_err *err)
{
    if (pc_manifest_has_content(m) && e->bundle.len != m->bundle_size)
        return pc_err_set(err, PC_E_INVALID, "relay log: seq %" PRIu64 " without its bundle",
                          m->seq);
    MDB_txn *txn = NULL;
    int mrc = mdb_txn_begin(l->env, NULL, 0, &txn);
    if (mrc != 0)
        return lmdb_err(err, mrc, "begin");
    uint64_t first, head;
    bounds_txn(l, txn, &first, &head);
    if (m->seq != head + 1) {
        mdb_txn_abort(txn);
        return m->seq <= head
                   ? PC_E_DUPLICATE
                   : pc_err_set(err, PC_E_SEQ_GAP, "relay log: seq %" PRIu64 " after head %" PRIu64,
                                m->seq, head);
    }
    Popcast__Entry stored = *e;
    stored.bundle_omitted = false;
    size_t n = popcast__entry__get_packed_size(&stored);
    uint8_t kb[8];
    pc_be64_put(kb, m->seq);
    MDB_val k = {8, kb}, v = {n, NULL};
    mrc = mdb_put(txn, l->log, &k, &v, MDB_RESERVE);
    if (mrc == 0)
        popcast__entry__pack(&stored, v.mv_data);
    if (mrc == 0 && e->bundle.len > 0 && m->bundle_hash.len == PC_HASH_LEN) {
        MDB_val hk = {PC_HASH_LEN, m->bundle_hash.data}, hv = {8, kb};
        mrc = mdb_put(txn, l->blobs, &hk, &hv, 0);
    }
    if (mrc == 0 && m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION)
        mrc = put_rotation(l, txn, m->seq, e->signed_);
    uint64_t bytes = meta_u64(txn, l->meta, "bytes", 0) + n;
    head = m->seq;
    while (mrc == 0 && first < head &&
           (head - first + 1 > l->opt.retain_entries || bytes > l->opt.retain_bytes)) {
        mrc = drop_first(l, txn, first, &bytes);
        first++;
    }
    if (mrc == 0)
        mrc = put_u64(txn, l->meta, "head", head);
    if (mrc == 0)
        mrc = put_u64(txn, l->meta, "first", first);
    if (mrc == 0)
        mrc = put_u64(txn, l->meta, "bytes", bytes);
    if (mrc == 0)
        mrc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    return mrc == 0 ? PC_OK : lmdb_err(err, mrc, "append");
}

static int clear(MDB_txn *txn, MDB_dbi dbi)
{
    return mdb_drop(txn, dbi, 0);
}

int pc_relay_log_reset(pc_relay_log *l, uint64_t seq, Popcast__Entry *const *rotations, size_t n,
                       const uint64_t *rotation_seqs, pc_err *err)
{
    MDB_txn *txn = NULL;
    int mrc = mdb_txn_begin(l->env, NULL, 0, &txn);
    if (mrc == 0)
        mrc = clear(txn, l->log);
    if (mrc == 0)
        mrc = clear(txn, l->blobs);
    if (mrc == 0)
        mrc = clear(txn, l->meta);
    for (size_t i = 0; mrc == 0 && i < n; i++)
        mrc = put_rotation(l, txn, rotation_seqs[i], rotations[i]->signed_);
    if (mrc == 0)
        mrc = put_u64(txn, l->meta, "head", seq);
    if (mrc == 0)
        mrc = put_u64(txn, l->meta, "first", seq + 1);
    if (mrc == 0)
        mrc = mdb_txn_commit(txn);
    else if (txn != NULL)
        mdb_txn_abort(txn);
    return mrc == 0 ? PC_OK : lmdb_err(err, mrc, "reset");
}

int pc_relay_log_get(pc_relay_log *l, uint64_t seq, Popcast__Entry **out, pc_err *err)
{
    MDB_txn *txn = NULL;
    int mrc = mdb_txn_begin(l->env, NULL, MDB_RDONLY, &txn);
    if (mrc != 0)
        return lmdb_err(err, mrc, "read");
    uint8_t kb[8];
    pc_be64_put(kb, seq);
    MDB_val k = {8, kb}, v;
    mrc = mdb_get(txn, l->log, &k, &v);
    int rc = PC_OK;
    if (mrc == MDB_NOTFOUND)
        rc = pc_err_set(err, PC_E_NOTFOUND, "relay log: no seq %" PRIu64, seq);
    else if (mrc != 0)
        rc = lmdb_err(err, mrc, "read");
    else if ((*out = popcast__entry__unpack(NULL, v.mv_size, v.mv_data)) == NULL)
        rc = pc_err_set(err, PC_E_STORE, "relay log: seq %" PRIu64 " does not decode", seq);
    mdb_txn_abort(txn);
    return rc;
}

int pc_relay_log_read_blob(pc_relay_log *l, const uint8_t hash[PC_HASH_LEN], uint64_t offset,
                           size_t len, uint8_t **out, size_t *got, uint64_t *total, pc_err *err)
{
    MDB_txn *txn = NULL;
    int mrc = mdb_txn_begin(l->env, NULL, MDB_RDONLY, &txn);
    if (mrc != 0)
        return lmdb_err(err, mrc, "read");
    MDB_val hk = {PC_HASH_LEN, (void *)hash}, hv;
    mrc = mdb_get(txn, l->blobs, &hk, &hv);
    uint64_t seq = mrc == 0 && hv.mv_size == 8 ? pc_be64_get(hv.mv_data) : 0;
    mdb_txn_abort(txn);
    if (seq == 0)
        return pc_err_set(err, PC_E_NOTFOUND, "relay log: no such bundle");
    Popcast__Entry *e = NULL;
    int rc = pc_relay_log_get(l, seq, &e, err);
    if (rc != PC_OK)
        return rc == PC_E_NOTFOUND ? pc_err_set(err, PC_E_NOTFOUND, "relay log: trimmed") : rc;
    *total = e->bundle.len;
    if (offset >= e->bundle.len) {
        popcast__entry__free_unpacked(e, NULL);
        return pc_err_set(err, PC_E_INVALID, "offset %" PRIu64 " past the bundle's end", offset);
    }
    size_t n = e->bundle.len - offset < len ? e->bundle.len - offset : len;
    *out = malloc(n ? n : 1);
    if (*out == NULL) {
        popcast__entry__free_unpacked(e, NULL);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    memcpy(*out, e->bundle.data + offset, n);
    *got = n;
    popcast__entry__free_unpacked(e, NULL);
    return PC_OK;
}

int pc_relay_log_foreach_rotation(pc_relay_log *l,
                                  int (*cb)(void *arg, const Popcast__SignedManifest *sm),
                                  void *arg, pc_err *err)
{
    MDB_txn *txn = NULL;
    int mrc = mdb_txn_begin(l->env, NULL, MDB_RDONLY, &txn);
    if (mrc != 0)
        return lmdb_err(err, mrc, "read");
    MDB_cursor *cur = NULL;
    mrc = mdb_cursor_open(txn, l->meta, &cur);
    /* Decoded first, the transaction ended, then the callbacks. */
    Popcast__SignedManifest **items = NULL;
    size_t n = 0, cap = 0;
    MDB_val k = {4, "rot/"}, v;
    int op = MDB_SET_RANGE;
    int rc = PC_OK;
    while (mrc == 0 && (mrc = mdb_cursor_get(cur, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        if (k.mv_size < 4 || memcmp(k.mv_data, "rot/", 4) != 0)
            break;
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            Popcast__SignedManifest **grown = realloc(items, cap * sizeof(*items));
            if (grown == NULL) {
                rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
                break;
            }
            items = grown;
        }
        if ((items[n] = popcast__signed_manifest__unpack(NULL, v.mv_size, v.mv_data)) == NULL) {
            rc = pc_err_set(err, PC_E_STORE, "relay log: a rotation does not decode");
            break;
        }
        n++;
    }
    if (rc == PC_OK && mrc != 0 && mrc != MDB_NOTFOUND)
        rc = lmdb_err(err, mrc, "read rotations");
    if (cur != NULL)
        mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    for (size_t i = 0; i < n; i++) {
        if (rc == PC_OK && cb(arg, items[i]) != 0)
            rc = pc_err_set(err, PC_E_INVALID, "relay log: a kept rotation was refused");
        popcast__signed_manifest__free_unpacked(items[i], NULL);
    }
    free(items);
    return rc;
}
