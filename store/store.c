/* store.c - popcast's LMDB layer (see store.h for the invariants). */
#include "store.h"
#include "target.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "byteorder.h"
#include "envelope.h"
#include "names.h"

#define DEFAULT_MAP_SIZE (64ull << 20)
#define DEFAULT_MAP_MAX  (64ull << 30)
#define VERSION_KEY_MAX  (PC_TENANT_MAX + 1 + 8)

/* Internal result of a transaction body: the map is full, grow and retry. */
#define MAP_FULL_RETRY 1000
/* meta's key for the last applied seq: pc_store_file_applied_seq reads it
 * from a file as the store does. */
#define APPLIED_SEQ_KEY     "applied_seq"
#define APPLIED_SEQ_KEY_LEN (sizeof(APPLIED_SEQ_KEY) - 1)

struct pc_store {
    MDB_env *env;
    MDB_dbi meta, log, versions, tenants, blobs, blobrefs;
    pc_store_options opt;
    /* mdb_env_set_mapsize needs no transaction open in this process:
     * every transaction holds this shared, growing the map holds it
     * exclusively. */
    pthread_rwlock_t resize;
    uint64_t map_size;
    _Atomic uint64_t grows;
    int lock_fd;
    char dir[3072];
};

static int mdb_fail(pc_err *err, int mrc, const char *what)
{
    if (mrc == MDB_MAP_FULL)
        return MAP_FULL_RETRY;
    return pc_err_set(err, PC_E_STORE, "%s: %s", what, mdb_strerror(mrc));
}

/* Transactions. */

static int read_begin(pc_store *s, MDB_txn **txn, pc_err *err)
{
    pthread_rwlock_rdlock(&s->resize);
    int mrc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, txn);
    if (mrc != 0) {
        pthread_rwlock_unlock(&s->resize);
        return pc_err_set(err, PC_E_STORE, "cannot begin a read: %s", mdb_strerror(mrc));
    }
    return PC_OK;
}

static void read_end(pc_store *s, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&s->resize);
}

/* With MDB_WRITEMAP, gives the data file's blocks up to size bytes now,
 * so that writing a page of the map never meets a full disk. */
static int reserve_disk(pc_store *s, uint64_t size, pc_err *err)
{
    if (!s->opt.write_map)
        return PC_OK;
    mdb_filehandle_t fd;
    int mrc = mdb_env_get_fd(s->env, &fd);
    if (mrc != 0)
        return pc_err_set(err, PC_E_STORE, "cannot reserve disk for the store: %s",
                          mdb_strerror(mrc));
    int prc = posix_fallocate(fd, 0, (off_t)size);
    if (prc != 0)
        return pc_err_set(err, PC_E_STORE, "store is full: cannot reserve %llu bytes on disk: %s",
                          (unsigned long long)size, strerror(prc));
    return PC_OK;
}

static int grow(pc_store *s, pc_err *err)
{
    pthread_rwlock_wrlock(&s->resize);
    int rc = PC_OK;
    if (s->map_size >= s->opt.map_size_max) {
        rc =
            pc_err_set(err, PC_E_STORE, "store is full: map size %llu bytes reached (map_size_max)",
                       (unsigned long long)s->map_size);
    } else {
        uint64_t next = s->map_size * 2;
        if (next > s->opt.map_size_max)
            next = s->opt.map_size_max;
        int mrc = 0;
        rc = reserve_disk(s, next, err);
        if (rc == PC_OK && (mrc = mdb_env_set_mapsize(s->env, (size_t)next)) != 0) {
            rc = pc_err_set(err, PC_E_STORE, "store is full: cannot grow the map to %llu: %s",
                            (unsigned long long)next, mdb_strerror(mrc));
        } else if (rc == PC_OK) {
            s->map_size = next;
            atomic_fetch_add(&s->grows, 1);
        }
    }
    pthread_rwlock_unlock(&s->resize);
    return rc;
}

typedef int (*txn_body)(pc_store *s, MDB_txn *txn, void *arg, pc_err *err);

/* Runs body in one write transaction, retrying after growing the map when
 * it is full. Nothing body did survives an error. */
static int write_txn(pc_store *s, txn_body body, void *arg, pc_err *err)
{
    for (;;) {
        MDB_txn *txn = NULL;
        pthread_rwlock_rdlock(&s->resize);
        int mrc = mdb_txn_begin(s->env, NULL, 0, &txn);
        int rc;
        if (mrc != 0) {
            rc = mdb_fail(err, mrc, "cannot begin a write");
        } else {
            rc = body(s, txn, arg, err);
            if (rc == PC_OK) {
                mrc = mdb_txn_commit(txn);
                if (mrc != 0)
                    rc = mdb_fail(err, mrc, "commit");
            } else {
                mdb_txn_abort(txn);
            }
        }
        pthread_rwlock_unlock(&s->resize);
        if (rc != MAP_FULL_RETRY)
            return rc;
        if ((rc = grow(s, err)) != PC_OK)
            return rc;
    }
}

/* Small helpers over one transaction. */

static int get_u64(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t klen, uint64_t *out,
                   pc_err *err)
{
    MDB_val key = {klen, (void *)k}, val;
    int mrc = mdb_get(txn, dbi, &key, &val);
    if (mrc == MDB_NOTFOUND) {
        *out = 0;
        return PC_E_NOTFOUND;
    }
    if (mrc != 0)
        return mdb_fail(err, mrc, "read");
    if (val.mv_size != 8)
        return pc_err_set(err, PC_E_STORE, "corrupt counter record");
    *out = pc_be64_get(val.mv_data);
    return PC_OK;
}

static int put_u64(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t klen, uint64_t v, pc_err *err)
{
    uint8_t b[8];
    pc_be64_put(b, v);
    MDB_val key = {klen, (void *)k}, val = {8, b};
    int mrc = mdb_put(txn, dbi, &key, &val, 0);
    return mrc ? mdb_fail(err, mrc, "write") : PC_OK;
}

static int applied_seq_txn(pc_store *s, MDB_txn *txn, uint64_t *out, pc_err *err)
{
    int rc = get_u64(txn, s->meta, APPLIED_SEQ_KEY, APPLIED_SEQ_KEY_LEN, out, err);
    return rc == PC_E_NOTFOUND ? PC_OK : rc;
}

static size_t version_key(uint8_t *buf, const char *tenant, uint64_t version)
{
    size_t n = strnlen(tenant, PC_TENANT_MAX);
    memcpy(buf, tenant, n);
    buf[n] = '\0';
    pc_be64_put(buf + n + 1, version);
    return n + 9;
}

static void state_from_record(pc_tenant_state *t, const char *name, size_t name_len,
                              const Popcast__TenantRecord *r)
{
    memset(t, 0, sizeof(*t));
    if (name_len > PC_TENANT_MAX)
        name_len = PC_TENANT_MAX;
    memcpy(t->tenant, name, name_len);
    t->active_version = r->active_version;
    t->active_seq = r->active_seq;
    if (r->active_hash.len == PC_HASH_LEN)
        memcpy(t->active_hash, r->active_hash.data, PC_HASH_LEN);
    t->last_version = r->last_version;
    t->deleted = r->deleted;
    t->live_version = r->live_version;
    t->live_seq = r->live_seq;
    t->stage_seq = r->stage_seq;
    t->active_targeted = r->active_targeted;
    t->base_seq = r->base_seq;
    if (r->live_hash.len == PC_HASH_LEN)
        memcpy(t->live_hash, r->live_hash.data, PC_HASH_LEN);
}

/* Reads a tenant into t; PC_E_NOTFOUND leaves t zeroed with the name. */
static int get_tenant_txn(pc_store *s, MDB_txn *txn, const char *tenant, pc_tenant_state *t,
                          pc_err *err)
{
    size_t n = strnlen(tenant, PC_TENANT_MAX + 1);
    memset(t, 0, sizeof(*t));
    memcpy(t->tenant, tenant, n > PC_TENANT_MAX ? PC_TENANT_MAX : n);
    MDB_val key = {n, (void *)tenant}, val;
    int mrc = mdb_get(txn, s->tenants, &key, &val);
    if (mrc == MDB_NOTFOUND)
        return PC_E_NOTFOUND;
    if (mrc != 0)
        return mdb_fail(err, mrc, "read tenant");
    Popcast__TenantRecord *r = popcast__tenant_record__unpack(NULL, val.mv_size, val.mv_data);
    if (r == NULL)
        return pc_err_set(err, PC_E_STORE, "corrupt tenant record for %s", tenant);
    state_from_record(t, tenant, n, r);
    popcast__tenant_record__free_unpacked(r, NULL);
    return PC_OK;
}

static int put_tenant_txn(pc_store *s, MDB_txn *txn, const pc_tenant_state *t, pc_err *err)
{
    Popcast__TenantRecord r = POPCAST__TENANT_RECORD__INIT;
    r.active_version = t->active_version;
    r.active_seq = t->active_seq;
    if (t->active_version != 0) {
        r.active_hash.data = (uint8_t *)t->active_hash;
        r.active_hash.len = PC_HASH_LEN;
    }
    r.last_version = t->last_version;
    r.deleted = t->deleted;
    r.live_version = t->live_version;
    r.live_seq = t->live_seq;
    r.stage_seq = t->stage_seq;
    r.active_targeted = t->active_targeted;
    r.base_seq = t->base_seq;
    if (t->live_version != 0) {
        r.live_hash.data = (uint8_t *)t->live_hash;
        r.live_hash.len = PC_HASH_LEN;
    }
    uint8_t buf[256];
    size_t len = popcast__tenant_record__pack(&r, buf);
    MDB_val key = {strlen(t->tenant), (void *)t->tenant}, val = {len, buf};
    int mrc = mdb_put(txn, s->tenants, &key, &val, 0);
    return mrc ? mdb_fail(err, mrc, "write tenant") : PC_OK;
}

/* Blob references (invariant 4). */

static int blob_ref(pc_store *s, MDB_txn *txn, const uint8_t hash[PC_HASH_LEN],
                    const uint8_t *bundle, size_t len, pc_err *err)
{
    uint64_t refs = 0;
    int rc = get_u64(txn, s->blobrefs, hash, PC_HASH_LEN, &refs, err);
    if (rc != PC_OK && rc != PC_E_NOTFOUND)
        return rc;
    if (refs == 0) {
        if (bundle == NULL)
            return pc_err_set(err, PC_E_STORE, "blob to reference is missing");
        MDB_val key = {PC_HASH_LEN, (void *)hash}, val = {len, (void *)bundle};
        int mrc = mdb_put(txn, s->blobs, &key, &val, 0);
        if (mrc != 0)
            return mdb_fail(err, mrc, "write blob");
    }
    return put_u64(txn, s->blobrefs, hash, PC_HASH_LEN, refs + 1, err);
}

static int blob_unref(pc_store *s, MDB_txn *txn, const uint8_t hash[PC_HASH_LEN], pc_err *err)
{
    uint64_t refs = 0;
    int rc = get_u64(txn, s->blobrefs, hash, PC_HASH_LEN, &refs, err);
    if (rc == PC_E_NOTFOUND || refs == 0)
        return PC_OK; /* nothing to drop: never fail a change over it */
    if (rc != PC_OK)
        return rc;
    if (refs > 1)
        return put_u64(txn, s->blobrefs, hash, PC_HASH_LEN, refs - 1, err);
    MDB_val key = {PC_HASH_LEN, (void *)hash};
    int mrc = mdb_del(txn, s->blobrefs, &key, NULL);
    if (mrc == 0 || mrc == MDB_NOTFOUND)
        mrc = mdb_del(txn, s->blobs, &key, NULL);
    if (mrc != 0 && mrc != MDB_NOTFOUND)
        return mdb_fail(err, mrc, "delete blob");
    return PC_OK;
}

/* Opening. */

static int lock_dir(pc_store *s, const char *dir, pc_err *err)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/popcast.lock", dir);
    s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lock_fd < 0)
        return pc_err_set(err, PC_E_IO, "cannot open %s: %s", path, strerror(errno));
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        close(s->lock_fd);
        s->lock_fd = -1;
        return pc_err_set(err, PC_E_UNAVAILABLE, "data directory %s is in use by another process",
                          dir);
    }
    return PC_OK;
}

/* Opens the LMDB environment in s->dir and its named databases, writing
 * through the map if s->opt.write_map. */
static int open_env_once(pc_store *s, pc_err *err)
{
    int mrc = mdb_env_create(&s->env);
    if (mrc == 0)
        mrc = mdb_env_set_maxdbs(s->env, PC_STORE_MAX_DBS);
    if (mrc == 0)
        mrc = mdb_env_set_mapsize(s->env, (size_t)s->opt.map_size);
    if (mrc == 0)
        mrc = mdb_env_open(s->env, s->dir,
                           MDB_NOTLS | (s->opt.no_sync ? MDB_NOSYNC : 0) |
                               (s->opt.write_map ? MDB_WRITEMAP : 0),
                           0600);
    if (mrc != 0) {
        if (s->env != NULL)
            mdb_env_close(s->env);
        s->env = NULL;
        return pc_err_set(err, PC_E_STORE, "cannot open the store in %s: %s", s->dir,
                          mdb_strerror(mrc));
    }
    int dead = 0;
    mdb_reader_check(s->env, &dead);
    MDB_envinfo info;
    mdb_env_info(s->env, &info);
    s->map_size = info.me_mapsize;
    if (s->map_size > s->opt.map_size_max)
        s->opt.map_size_max = s->map_size;
    int rc = reserve_disk(s, s->map_size, err);
    if (rc != PC_OK) {
        mdb_env_close(s->env);
        s->env = NULL;
        return rc;
    }
    MDB_txn *txn = NULL;
    mrc = mdb_txn_begin(s->env, NULL, 0, &txn);
    struct {
        const char *name;
        MDB_dbi *dbi;
    } dbs[] = {{"meta", &s->meta},       {"log", &s->log},     {"versions", &s->versions},
               {"tenants", &s->tenants}, {"blobs", &s->blobs}, {"blobrefs", &s->blobrefs}};
    for (size_t i = 0; mrc == 0 && i < sizeof(dbs) / sizeof(dbs[0]); i++)
        mrc = mdb_dbi_open(txn, dbs[i].name, MDB_CREATE, dbs[i].dbi);
    if (mrc == 0)
        mrc = mdb_txn_commit(txn);
    else if (txn != NULL)
        mdb_txn_abort(txn);
    if (mrc != 0) {
        mdb_env_close(s->env);
        s->env = NULL;
        return pc_err_set(err, PC_E_STORE, "cannot open the store's tables in %s: %s", s->dir,
                          mdb_strerror(mrc));
    }
    return PC_OK;
}

/* Opens as open_env_once. A store that cannot be written through its map
 * (the disk cannot give the map's size, say) opens with LMDB's page
 * copies instead, as without write_map: an agent must serve from the
 * store it has rather than not start (static stability).
 * pc_store_stats_get says which mode it is in. */
static int open_env(pc_store *s, pc_err *err)
{
    int rc = open_env_once(s, err);
    if (rc == PC_OK || !s->opt.write_map)
        return rc;
    s->opt.write_map = false;
    pc_err_clear(err);
    return open_env_once(s, err);
}

int pc_store_copy(pc_store *s, const char *path, pc_err *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return pc_err_set(err, PC_E_IO, "cannot create %s: %s", path, strerror(errno));
    pthread_rwlock_rdlock(&s->resize);
    int mrc = mdb_env_copyfd2(s->env, fd, MDB_CP_COMPACT);
    pthread_rwlock_unlock(&s->resize);
    int crc = fsync(fd);
    close(fd);
    if (mrc != 0 || crc != 0) {
        unlink(path);
        return pc_err_set(err, PC_E_STORE, "cannot copy the store to %s: %s", path,
                          mrc ? mdb_strerror(mrc) : strerror(errno));
    }
    return PC_OK;
}

int pc_store_replace(pc_store *s, const char *path, pc_err *err)
{
    /* Exclusive: no transaction of this process is open while the
     * environment is swapped under it. */
    pthread_rwlock_wrlock(&s->resize);
    char data[3200];
    snprintf(data, sizeof(data), "%s/data.mdb", s->dir);
    mdb_env_close(s->env);
    s->env = NULL;
    int rc = PC_OK;
    if (rename(path, data) != 0)
        rc = pc_err_set(err, PC_E_IO, "cannot move %s into place: %s", path, strerror(errno));
    /* Reopen whatever is there now: the new store, or the old one if the
     * rename failed. */
    pc_err oerr;
    if (open_env(s, &oerr) != PC_OK && rc == PC_OK) {
        rc = oerr.code;
        if (err != NULL)
            *err = oerr;
    }
    pthread_rwlock_unlock(&s->resize);
    return rc;
}

int pc_store_open(pc_store **out, const char *dir, const pc_store_options *opt, pc_err *err)
{
    *out = NULL;
    pc_store *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    s->lock_fd = -1;
    if (opt != NULL)
        s->opt = *opt;
    if (s->opt.map_size == 0)
        s->opt.map_size = DEFAULT_MAP_SIZE;
    if (s->opt.map_size_max == 0)
        s->opt.map_size_max = DEFAULT_MAP_MAX;
    if (s->opt.map_size_max < s->opt.map_size)
        s->opt.map_size_max = s->opt.map_size;
    pthread_rwlock_init(&s->resize, NULL);
    int rc = lock_dir(s, dir, err);
    if (rc != PC_OK)
        goto fail;
    snprintf(s->dir, sizeof(s->dir), "%s", dir);
    if ((rc = open_env(s, err)) != PC_OK)
        goto fail;
    *out = s;
    return PC_OK;
fail:
    if (s->env != NULL)
        mdb_env_close(s->env);
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    pthread_rwlock_destroy(&s->resize);
    free(s);
    return rc;
}

void pc_store_close(pc_store *s)
{
    if (s == NULL)
        return;
    if (s->env != NULL)
        mdb_env_close(s->env);
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    pthread_rwlock_destroy(&s->resize);
    free(s);
}

/* Applying entries. */

static int check_content(const Popcast__Manifest *m, const uint8_t *bundle, size_t len, pc_err *err)
{
    if (!pc_manifest_has_content(m)) {
        if (bundle != NULL && len != 0)
            return pc_err_set(err, PC_E_INVALID, "an entry of this kind carries no bundle");
        return PC_OK;
    }
    if (bundle == NULL && len != 0)
        return pc_err_set(err, PC_E_INVALID, "bundle missing");
    if (m->bundle_hash.len != PC_HASH_LEN)
        return pc_err_set(err, PC_E_INVALID, "manifest hash is not %d bytes", PC_HASH_LEN);
    return pc_envelope_check_bundle(m, bundle ? bundle : (const uint8_t *)"", len, err);
}

typedef struct apply_args {
    const Popcast__SignedManifest *sm;
    const Popcast__Manifest *m;
    const uint8_t *bundle;
    size_t len;
    bool check_seq;
    bool applied; /* out: the entry changed the tenant (snapshots skip some) */
} apply_args;

static int put_log(pc_store *s, MDB_txn *txn, const Popcast__SignedManifest *sm, uint64_t seq,
                   pc_err *err)
{
    Popcast__LogRecord rec = POPCAST__LOG_RECORD__INIT;
    rec.signed_ = (Popcast__SignedManifest *)sm;
    size_t len = popcast__log_record__get_packed_size(&rec);
    uint8_t k[8];
    pc_be64_put(k, seq);
    MDB_val key = {8, k}, val = {len, NULL};
    int mrc = mdb_put(txn, s->log, &key, &val, MDB_RESERVE);
    if (mrc != 0)
        return mdb_fail(err, mrc, "write log");
    popcast__log_record__pack(&rec, val.mv_data);
    return PC_OK;
}

/* A key rotation is also kept outside the log, which raft and snapshots
 * truncate: the chain of signing keys must survive both. */
static int put_rotation(pc_store *s, MDB_txn *txn, const Popcast__SignedManifest *sm, uint64_t seq,
                        pc_err *err)
{
    Popcast__LogRecord rec = POPCAST__LOG_RECORD__INIT;
    rec.signed_ = (Popcast__SignedManifest *)sm;
    size_t len = popcast__log_record__get_packed_size(&rec);
    char k[40];
    int klen = snprintf(k, sizeof(k), PC_STORE_ROTATION_PREFIX "%020llu", (unsigned long long)seq);
    MDB_val key = {(size_t)klen, k}, val = {len, NULL};
    int mrc = mdb_put(txn, s->meta, &key, &val, MDB_RESERVE | MDB_NOOVERWRITE);
    if (mrc == MDB_KEYEXIST)
        return PC_OK; /* known already (a snapshot repeats the chain) */
    if (mrc != 0)
        return mdb_fail(err, mrc, "write key rotation");
    popcast__log_record__pack(&rec, val.mv_data);
    return PC_OK;
}

/* A STAGE (invariant 8): it widens where the active version is live, so
 * it only moves the tenant's stage_seq, and only while the version it
 * names is still the active one. One that a newer change overtook is
 * logged and does nothing else (the controller that signed it had not
 * seen that change yet); one naming a version the tenant never had is
 * refused. */
static int apply_stage(pc_store *s, MDB_txn *txn, apply_args *a, pc_tenant_state *t, pc_err *err)
{
    const Popcast__Manifest *m = a->m;
    if (m->version > t->last_version)
        return pc_err_set(err, PC_E_INVALID, "%s has no version %llu to stage (last is %llu)",
                          m->tenant, (unsigned long long)m->version,
                          (unsigned long long)t->last_version);
    if (m->version != t->active_version || t->deleted || m->seq <= t->stage_seq) {
        return PC_OK; /* a->applied stays false: a snapshot does not log it */
    }
    t->stage_seq = m->seq;
    if (pc_target_is_everyone(m->target)) {
        t->active_targeted = false;
        t->base_seq = 0;
    }
    int rc = put_tenant_txn(s, txn, t, err);
    if (rc == PC_OK)
        a->applied = true;
    return rc;
}

/* The tenant part of an apply: version rule, version record, blob refs,
 * tenant pointer. */
static int apply_tenant(pc_store *s, MDB_txn *txn, apply_args *a, pc_err *err)
{
    const Popcast__Manifest *m = a->m;
    pc_tenant_state t;
    int rc = get_tenant_txn(s, txn, m->tenant, &t, err);
    if (rc != PC_OK && rc != PC_E_NOTFOUND)
        return rc;
    if (m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_STAGE)
        return apply_stage(s, txn, a, &t, err);
    if (m->version <= t.last_version) {
        if (!a->check_seq)
            return PC_OK; /* snapshot: we already have this or newer */
        return pc_err_set(err, PC_E_STALE_VERSION,
                          "%s version %llu is not above its last version %llu", m->tenant,
                          (unsigned long long)m->version, (unsigned long long)t.last_version);
    }
    uint8_t vk[VERSION_KEY_MAX];
    size_t vklen = version_key(vk, m->tenant, m->version);
    if ((rc = put_u64(txn, s->versions, vk, vklen, m->seq, err)) != PC_OK)
        return rc;
    /* What the agents a targeted version does not name keep serving. */
    bool targeted = pc_manifest_has_content(m) && !pc_target_is_everyone(m->target);
    if (!targeted)
        t.base_seq = 0;
    else if (!t.active_targeted)
        t.base_seq = t.active_version != 0 ? t.active_seq : 0;
    t.active_targeted = targeted;
    if (pc_manifest_has_content(m)) {
        if ((rc = blob_ref(s, txn, m->bundle_hash.data, a->bundle, a->len, err)) != PC_OK)
            return rc;
        if (!s->opt.keep_history && t.active_version != 0 &&
            (rc = blob_unref(s, txn, t.active_hash, err)) != PC_OK)
            return rc;
        t.active_version = m->version;
        t.active_seq = m->seq;
        memcpy(t.active_hash, m->bundle_hash.data, PC_HASH_LEN);
        t.deleted = false;
    } else {
        if (!s->opt.keep_history && t.active_version != 0 &&
            (rc = blob_unref(s, txn, t.active_hash, err)) != PC_OK)
            return rc;
        t.active_version = 0;
        t.active_seq = 0;
        memset(t.active_hash, 0, PC_HASH_LEN);
        t.deleted = true;
    }
    t.stage_seq = 0;
    t.last_version = m->version;
    if ((rc = put_tenant_txn(s, txn, &t, err)) != PC_OK)
        return rc;
    a->applied = true;
    return PC_OK;
}

static int apply_body(pc_store *s, MDB_txn *txn, void *arg, pc_err *err)
{
    apply_args *a = arg;
    const Popcast__Manifest *m = a->m;
    uint64_t applied = 0;
    int rc = applied_seq_txn(s, txn, &applied, err);
    if (rc != PC_OK)
        return rc;
    if (m->seq <= applied)
        return pc_err_set(err, PC_E_DUPLICATE, "seq %llu is already applied (at %llu)",
                          (unsigned long long)m->seq, (unsigned long long)applied);
    if (m->seq > applied + 1)
        return pc_err_set(err, PC_E_SEQ_GAP, "seq %llu follows %llu: entries are missing",
                          (unsigned long long)m->seq, (unsigned long long)applied);
    if (m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION)
        rc = put_rotation(s, txn, a->sm, m->seq, err);
    else
        rc = apply_tenant(s, txn, a, err);
    if (rc != PC_OK)
        return rc;
    if ((rc = put_log(s, txn, a->sm, m->seq, err)) != PC_OK)
        return rc;
    return put_u64(txn, s->meta, APPLIED_SEQ_KEY, APPLIED_SEQ_KEY_LEN, m->seq, err);
}

/* What pc_store_apply checks before any transaction. */
static int check_entry(const Popcast__SignedManifest *sm, const Popcast__Manifest *m,
                       const uint8_t *bundle, size_t bundle_len, pc_err *err)
{
    if (sm == NULL || m == NULL || sm->manifest.len == 0)
        return pc_err_set(err, PC_E_INVALID, "entry without a signed manifest");
    if (m->seq == 0)
        return pc_err_set(err, PC_E_INVALID, "seq must be >= 1");
    if (m->kind != POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION &&
        (!pc_tenant_name_valid(m->tenant) || m->version == 0))
        return pc_err_set(err, PC_E_INVALID, "entry without a valid tenant and version");
    if (m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION &&
        m->next_public_key.len != PC_PK_LEN)
        return pc_err_set(err, PC_E_INVALID, "key rotation without a next key");
    return check_content(m, bundle, bundle_len, err);
}

int pc_store_apply(pc_store *s, const Popcast__SignedManifest *sm, const Popcast__Manifest *m,
                   const uint8_t *bundle, size_t bundle_len, pc_err *err)
{
    int rc = check_entry(sm, m, bundle, bundle_len, err);
    if (rc != PC_OK)
        return rc;
    apply_args a = {sm, m, bundle, bundle_len, true, false};
    return write_txn(s, apply_body, &a, err);
}

/* Idempotency keys (invariant 7). */

#define IDEM_PREFIX        "idem/"
#define IDEM_TIME_PREFIX   "idemt/"
#define IDEM_KEY_MAX       (sizeof(IDEM_TIME_PREFIX) + 21 + PC_TENANT_MAX + 1 + PC_IDEMPOTENCY_KEY_MAX)
#define IDEM_PRUNE_PER_PUT 16

static size_t idem_key(char *buf, size_t cap, const char *tenant, const char *key)
{
    return (size_t)snprintf(buf, cap, IDEM_PREFIX "%s/%s", tenant, key);
}

static size_t idem_time_key(char *buf, size_t cap, int64_t ms, const char *tenant, const char *key)
{
    return (size_t)snprintf(buf, cap, IDEM_TIME_PREFIX "%020lld/%s/%s",
                            (long long)(ms > 0 ? ms : 0), tenant, key);
}

/* Drops a few records older than the retention before ms (oldest first):
 * at most as many per put as it may take, so the kept set stays bounded
 * by the write rate over the retention. */
static int idem_prune(pc_store *s, MDB_txn *txn, int64_t ms, pc_err *err)
{
    char bound[IDEM_KEY_MAX];
    int blen = snprintf(
        bound, sizeof(bound), IDEM_TIME_PREFIX "%020lld",
        (long long)(ms > PC_STORE_IDEMPOTENCY_RETAIN_MS ? ms - PC_STORE_IDEMPOTENCY_RETAIN_MS : 0));
    size_t plen = strlen(IDEM_TIME_PREFIX);
    MDB_cursor *cur = NULL;
    int mrc = mdb_cursor_open(txn, s->meta, &cur);
    if (mrc != 0)
        return mdb_fail(err, mrc, "open idempotency index");
    int rc = PC_OK;
    for (int n = 0; rc == PC_OK && n < IDEM_PRUNE_PER_PUT; n++) {
        /* Sought again after each delete: the oldest left comes first. */
        MDB_val k = {plen, (void *)IDEM_TIME_PREFIX}, v;
        mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        if (mrc == MDB_NOTFOUND)
            break;
        if (mrc != 0) {
            rc = mdb_fail(err, mrc, "walk idempotency index");
            break;
        }
        if (k.mv_size <= plen + 21 || memcmp(k.mv_data, IDEM_TIME_PREFIX, plen) != 0 ||
            memcmp(k.mv_data, bound, (size_t)blen) >= 0)
            break;
        /* "idemt/<20 digits>/<tenant>/<key>" indexes "idem/<tenant>/<key>". */
        char rec[IDEM_KEY_MAX];
        size_t skip = plen + 21;
        int rlen = snprintf(rec, sizeof(rec), IDEM_PREFIX "%.*s", (int)(k.mv_size - skip),
                            (const char *)k.mv_data + skip);
        MDB_val rk = {rlen > 0 && (size_t)rlen < sizeof(rec) ? (size_t)rlen : 0, rec};
        if ((mrc = mdb_cursor_del(cur, 0)) != 0) {
            rc = mdb_fail(err, mrc, "drop an idempotency key");
            break;
        }
        int drc = rk.mv_size > 0 ? mdb_del(txn, s->meta, &rk, NULL) : MDB_NOTFOUND;
        if (drc != 0 && drc != MDB_NOTFOUND)
            rc = mdb_fail(err, drc, "drop an idempotency key");
    }
    mdb_cursor_close(cur);
    return rc;
}

static int put_idempotency(pc_store *s, MDB_txn *txn, const Popcast__IdempotencyRecord *r,
                           const Popcast__Manifest *m, pc_err *err)
{
    if (r->seq != m->seq || m->tenant == NULL || strcmp(r->tenant, m->tenant) != 0 ||
        !pc_idempotency_key_valid(r->key) || r->fingerprint.len != PC_HASH_LEN)
        return pc_err_set(err, PC_E_INVALID, "idempotency record does not match entry seq %llu",
                          (unsigned long long)m->seq);
    char k[IDEM_KEY_MAX], tk[IDEM_KEY_MAX];
    size_t klen = idem_key(k, sizeof(k), r->tenant, r->key);
    size_t len = popcast__idempotency_record__get_packed_size(r);
    MDB_val key = {klen, k}, val = {len, NULL};
    /* A key names one entry: a second entry for a kept key is refused
     * (the pipeline answers a retry from the first instead). */
    int mrc = mdb_put(txn, s->meta, &key, &val, MDB_RESERVE | MDB_NOOVERWRITE);
    if (mrc == MDB_KEYEXIST)
        return pc_err_set(err, PC_E_EXISTS, "idempotency key %s of %s names another entry", r->key,
                          r->tenant);
    if (mrc != 0)
        return mdb_fail(err, mrc, "write idempotency key");
    popcast__idempotency_record__pack(r, val.mv_data);
    size_t tklen = idem_time_key(tk, sizeof(tk), r->created_unix_ms, r->tenant, r->key);
    MDB_val tkey = {tklen, tk}, empty = {0, ""};
    if ((mrc = mdb_put(txn, s->meta, &tkey, &empty, 0)) != 0)
        return mdb_fail(err, mrc, "write idempotency index");
    return idem_prune(s, txn, r->created_unix_ms, err);
}

int pc_store_get_idempotency(pc_store *s, const char *tenant, const char *key,
                             Popcast__IdempotencyRecord **out, pc_err *err)
{
    *out = NULL;
    if (!pc_tenant_name_valid(tenant) || !pc_idempotency_key_valid(key))
        return pc_err_set(err, PC_E_INVALID, "not a valid tenant and idempotency key");
    char k[IDEM_KEY_MAX];
    MDB_val mk = {idem_key(k, sizeof(k), tenant, key), k}, v;
    MDB_txn *txn;
    int rc = read_begin(s, &txn, err);
    if (rc != PC_OK)
        return rc;
    int mrc = mdb_get(txn, s->meta, &mk, &v);
    if (mrc == MDB_NOTFOUND)
        rc = pc_err_set(err, PC_E_NOTFOUND, "no idempotency key %s for %s", key, tenant);
    else if (mrc != 0)
        rc = mdb_fail(err, mrc, "read idempotency key");
    else if ((*out = popcast__idempotency_record__unpack(NULL, v.mv_size, v.mv_data)) == NULL)
        rc = pc_err_set(err, PC_E_STORE, "idempotency key %s of %s does not decode", key, tenant);
    read_end(s, txn);
    return rc;
}

typedef struct batch_args {
    const pc_store_item *items;
    size_t n;
} batch_args;

static int batch_body(pc_store *s, MDB_txn *txn, void *arg, pc_err *err)
{
    batch_args *b = arg;
    for (size_t i = 0; i < b->n; i++) {
        const pc_store_item *it = &b->items[i];
        apply_args a = {it->sm, it->m, it->bundle, it->bundle_len, true, false};
        /* Each entry sees the ones before it (same transaction), so the
         * seq and version checks are exactly pc_store_apply's, in order. */
        int rc = apply_body(s, txn, &a, err);
        if (rc == PC_OK && it->idempotency != NULL)
            rc = put_idempotency(s, txn, it->idempotency, it->m, err);
        if (rc != PC_OK)
            return rc;
    }
    return PC_OK;
}

int pc_store_apply_batch(pc_store *s, const pc_store_item *items, size_t n, pc_err *err)
{
    if (n == 0)
        return pc_err_set(err, PC_E_INVALID, "an empty batch");
    for (size_t i = 0; i < n; i++) {
        const pc_store_item *it = &items[i];
        int rc = check_entry(it->sm, it->m, it->bundle, it->bundle_len, err);
        if (rc != PC_OK)
            return rc;
    }
    batch_args b = {items, n};
    return write_txn(s, batch_body, &b, err);
}

typedef struct live_args {
    const char *tenant;
    uint64_t version;
} live_args;

static int live_body(pc_store *s, MDB_txn *txn, void *arg, pc_err *err);

typedef struct snapshot_args {
    uint64_t seq;
    const pc_store_item *items;
    size_t n;
    bool *applied;
} snapshot_args;

static int snapshot_body(pc_store *s, MDB_txn *txn, void *arg, pc_err *err)
{
    snapshot_args *sa = arg;
    uint64_t applied = 0;
    int rc = applied_seq_txn(s, txn, &applied, err);
    if (rc != PC_OK)
        return rc;
    if (sa->seq <= applied)
        return pc_err_set(err, PC_E_DUPLICATE, "snapshot at seq %llu is not ahead of %llu",
                          (unsigned long long)sa->seq, (unsigned long long)applied);
    for (size_t i = 0; i < sa->n; i++) {
        const pc_store_item *it = &sa->items[i];
        apply_args a = {it->sm, it->m, it->bundle, it->bundle_len, false, false};
        if (it->m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION) {
            if ((rc = put_rotation(s, txn, it->sm, it->m->seq, err)) != PC_OK)
                return rc;
            continue;
        }
        if ((rc = apply_tenant(s, txn, &a, err)) != PC_OK)
            return rc;
        if (a.applied && (rc = put_log(s, txn, it->sm, it->m->seq, err)) != PC_OK)
            return rc;
        if (a.applied && it->live && pc_manifest_has_content(it->m)) {
            live_args la = {it->m->tenant, it->m->version};
            if ((rc = live_body(s, txn, &la, err)) != PC_OK)
                return rc;
        }
        if (sa->applied != NULL)
            sa->applied[i] = a.applied;
    }
    /* The log below this seq has holes: only entries after it are whole. */
    if ((rc = put_u64(txn, s->meta, "log_base", 8, sa->seq, err)) != PC_OK)
        return rc;
    return put_u64(txn, s->meta, APPLIED_SEQ_KEY, APPLIED_SEQ_KEY_LEN, sa->seq, err);
}

int pc_store_install_snapshot(pc_store *s, uint64_t seq, const pc_store_item *items, size_t n,
                              bool *applied, pc_err *err)
{
    for (size_t i = 0; i < n; i++) {
        const pc_store_item *it = &items[i];
        if (it->sm == NULL || it->m == NULL || it->m->seq == 0 || it->m->seq > seq)
            return pc_err_set(err, PC_E_INVALID, "snapshot item %zu is malformed", i);
        if (it->m->kind != POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION &&
            (!pc_tenant_name_valid(it->m->tenant) || it->m->version == 0))
            return pc_err_set(err, PC_E_INVALID, "snapshot item %zu has no valid tenant", i);
        if (it->m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION &&
            it->m->next_public_key.len != PC_PK_LEN)
            return pc_err_set(err, PC_E_INVALID, "snapshot item %zu: rotation without a key", i);
        int rc = check_content(it->m, it->bundle, it->bundle_len, err);
        if (rc != PC_OK)
            return rc;
        if (applied != NULL)
            applied[i] = false;
    }
    snapshot_args sa = {seq, items, n, applied};
    int rc = write_txn(s, snapshot_body, &sa, err);
    if (rc != PC_OK && applied != NULL)
        memset(applied, 0, n * sizeof(*applied));
    return rc;
}

static int live_body(pc_store *s, MDB_txn *txn, void *arg, pc_err *err)
{
    live_args *la = arg;
    pc_tenant_state t;
    int rc = get_tenant_txn(s, txn, la->tenant, &t, err);
    if (rc == PC_E_NOTFOUND)
        return pc_err_set(err, PC_E_NOTFOUND, "tenant %s not found", la->tenant);
    if (rc != PC_OK)
        return rc;
    if (la->version == t.live_version)
        return PC_OK;
    if (la->version != 0 && la->version != t.active_version)
        return pc_err_set(err, PC_E_INVALID, "%s version %llu is not its active version %llu",
                          la->tenant, (unsigned long long)la->version,
                          (unsigned long long)t.active_version);
    if (!s->opt.keep_history) {
        if (la->version != 0 && (rc = blob_ref(s, txn, t.active_hash, NULL, 0, err)) != PC_OK)
            return rc;
        if (t.live_version != 0 && (rc = blob_unref(s, txn, t.live_hash, err)) != PC_OK)
            return rc;
    }
    t.live_version = la->version;
    t.live_seq = la->version ? t.active_seq : 0;
    if (la->version != 0)
        memcpy(t.live_hash, t.active_hash, PC_HASH_LEN);
    else
        memset(t.live_hash, 0, PC_HASH_LEN);
    return put_tenant_txn(s, txn, &t, err);
}

int pc_store_set_live(pc_store *s, const char *tenant, uint64_t version, pc_err *err)
{
    if (!pc_tenant_name_valid(tenant))
        return pc_err_set(err, PC_E_INVALID, "invalid tenant name");
    live_args la = {tenant, version};
    return write_txn(s, live_body, &la, err);
}

typedef struct many_args {
    const pc_store_write *w;
    size_t n;
} many_args;

static int many_body(pc_store *s, MDB_txn *txn, void *arg, pc_err *err)
{
    many_args *ma = arg;
    for (size_t i = 0; i < ma->n; i++) {
        const pc_store_write *w = &ma->w[i];
        int rc;
        if (w->tenant != NULL) {
            live_args la = {w->tenant, w->live_version};
            rc = live_body(s, txn, &la, err);
        } else {
            MDB_val k = {strlen(w->meta_key), (void *)w->meta_key},
                    v = {w->meta_len, (void *)w->meta_val};
            int mrc =
                w->meta_delete ? mdb_del(txn, s->meta, &k, NULL) : mdb_put(txn, s->meta, &k, &v, 0);
            if (mrc == MDB_NOTFOUND && w->meta_delete)
                mrc = 0;
            rc = mrc ? mdb_fail(err, mrc, "write meta") : PC_OK;
        }
        if (rc != PC_OK)
            return rc;
    }
    return PC_OK;
}

int pc_store_write_many(pc_store *s, const pc_store_write *w, size_t n, pc_err *err)
{
    for (size_t i = 0; i < n; i++) {
        if (w[i].tenant != NULL ? !pc_tenant_name_valid(w[i].tenant)
                                : (w[i].meta_key == NULL || w[i].meta_key[0] == '\0' ||
                                   strlen(w[i].meta_key) > 200))
            return pc_err_set(err, PC_E_INVALID, "write %zu of %zu names no valid record", i, n);
    }
    many_args ma = {w, n};
    return write_txn(s, many_body, &ma, err);
}

/* Reads. */

int pc_store_applied_seq(pc_store *s, uint64_t *out, pc_err *err)
{
    MDB_txn *txn;
    int rc = read_begin(s, &txn, err);
    if (rc != PC_OK)
        return rc;
    rc = applied_seq_txn(s, txn, out, err);
    read_end(s, txn);
    return rc == MAP_FULL_RETRY ? PC_E_STORE : rc;
}

int pc_store_get_tenant(pc_store *s, const char *tenant, pc_tenant_state *out, pc_err *err)
{
    if (!pc_tenant_name_valid(tenant))
        return pc_err_set(err, PC_E_NOTFOUND, "no such tenant");
    MDB_txn *txn;
    int rc = read_begin(s, &txn, err);
    if (rc != PC_OK)
        return rc;
    rc = get_tenant_txn(s, txn, tenant, out, err);
    read_end(s, txn);
    if (rc == PC_E_NOTFOUND)
        pc_err_set(err, PC_E_NOTFOUND, "tenant %s not found", tenant);
    return rc;
}

/* Walks collect everything inside one read transaction first and call back
 * after it ends, so callbacks may use the store freely. */

/* A callback stopped the walk with rc (store.h, "Walks"): the walker
 * returns rc as it is, and err says so unless the callback filled it. */
static int walk_stopped(pc_err *err, int rc)
{
    if (err != NULL && err->msg[0] == '\0')
        pc_err_set(err, rc, "the walk was stopped by its callback (%s)", pc_err_name(rc));
    return rc;
}
typedef struct tenant_list {
    pc_tenant_state *items;
    size_t n, cap;
} tenant_list;

static int collect_tenants(pc_store *s, MDB_txn *txn, tenant_list *l, pc_err *err)
{
    MDB_cursor *cur;
    int mrc = mdb_cursor_open(txn, s->tenants, &cur);
    if (mrc != 0)
        return mdb_fail(err, mrc, "cursor");
    MDB_val key, val;
    int rc = PC_OK;
    for (mrc = mdb_cursor_get(cur, &key, &val, MDB_FIRST); mrc == 0;
         mrc = mdb_cursor_get(cur, &key, &val, MDB_NEXT)) {
        Popcast__TenantRecord *r = popcast__tenant_record__unpack(NULL, val.mv_size, val.mv_data);
        if (r == NULL) {
            rc = pc_err_set(err, PC_E_STORE, "corrupt tenant record");
            break;
        }
        if (l->n == l->cap) {
            size_t cap = l->cap ? l->cap * 2 : 32;
            pc_tenant_state *grown = realloc(l->items, cap * sizeof(*grown));
            if (grown == NULL) {
                popcast__tenant_record__free_unpacked(r, NULL);
                rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
                break;
            }
            l->items = grown;
            l->cap = cap;
        }
        state_from_record(&l->items[l->n++], key.mv_data, key.mv_size, r);
        popcast__tenant_record__free_unpacked(r, NULL);
    }
    if (rc == PC_OK && mrc != MDB_NOTFOUND)
        rc = mdb_fail(err, mrc, "walk tenants");
    mdb_cursor_close(cur);
    return rc == MAP_FULL_RETRY ? PC_E_STORE : rc;
}

int pc_store_foreach_tenant(pc_store *s, int (*cb)(void *arg, const pc_tenant_state *t), void *arg,
                            pc_err *err)
{
    pc_err_clear(err);
    MDB_txn *txn;
    tenant_list l = {0};
    int rc = read_begin(s, &txn, err);
    if (rc != PC_OK)
        return rc;
    rc = collect_tenants(s, txn, &l, err);
    read_end(s, txn);
    for (size_t i = 0; rc == PC_OK && i < l.n; i++) {
        int stop = cb(arg, &l.items[i]);
        if (stop != 0)
            rc = walk_stopped(err, stop);
    }
    free(l.items);
    return rc;
}

int pc_store_snapshot_read(pc_store *s, uint64_t *seq,
                           int (*cb)(void *arg, const pc_tenant_state *t, uint64_t latest_seq),
                           void *arg, pc_err *err)
{
    pc_err_clear(err);
    MDB_txn *txn;
    tenant_list l = {0};
    int rc = read_begin(s, &txn, err);
    if (rc != PC_OK)
        return rc;
    rc = applied_seq_txn(s, txn, seq, err);
    if (rc == PC_OK)
        rc = collect_tenants(s, txn, &l, err);
    /* Each tenant's latest entry: its last version's seq, read in the same
     * transaction as the applied seq so the set is exactly that seq's. */
    uint64_t *seqs = rc == PC_OK ? calloc(l.n ? l.n : 1, sizeof(*seqs)) : NULL;
    if (rc == PC_OK && seqs == NULL)
        rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
    for (size_t i = 0; rc == PC_OK && i < l.n; i++) {
        uint8_t vk[VERSION_KEY_MAX];
        size_t vklen = version_key(vk, l.items[i].tenant, l.items[i].last_version);
        rc = get_u64(txn, s->versions, vk, vklen, &seqs[i], err);
        if (rc == PC_E_NOTFOUND)
            rc = pc_err_set(err, PC_E_STORE, "tenant %s has no record of version %llu",
                            l.items[i].tenant, (unsigned long long)l.items[i].last_version);
    }
    read_end(s, txn);
    if (rc == MAP_FULL_RETRY)
        rc = PC_E_STORE;
    for (size_t i = 0; rc == PC_OK && i < l.n; i++) {
        int stop = cb(arg, &l.items[i], seqs[i]);
        if (stop != 0)
            rc = walk_stopped(err, stop);
    }
    free(seqs);
    free(l.items);
    return rc;
}

int pc_store_version_seq(pc_store *s, const char *tenant, uint64_t version, uint64_t *seq,
                         pc_err *err)
{
    if (!pc_tenant_name_valid(tenant))
        return pc_err_set(err, PC_E_NOTFOUND, "no such tenant");
    MDB_txn *txn;
    int rc = read_begin(s, &txn, err);
    if (rc != PC_OK)
        return rc;
    uint8_t vk[VERSION_KEY_MAX];
    size_t vklen = version_key(vk, tenant, version);
    rc = get_u64(txn, s->versions, vk, vklen, seq, err);
    read_end(s, txn);
    if (rc == PC_E_NOTFOUND)
        pc_err_set(err, PC_E_NOTFOUND, "tenant %s has no version %llu", tenant,
                   (unsigned long long)version);
    return rc == MAP_FULL_RETRY ? PC_E_STORE : rc;
}

int pc_store_foreach_version(pc_store *s, const char *tenant,
                             int (*cb)(void *arg, uint64_t version, uint64_t seq), void *arg,
                             pc_err *err)
{
    pc_err_clear(err);
    if (!pc_tenant_name_valid(tenant))
        return pc_err_set(err, PC_E_NOTFOUND, "no such tenant");
    MDB_txn *txn;
    int rc = read_begin(s, &txn, err);
    if (rc != PC_OK)
        return rc;
    uint64_t *pairs = NULL;
    size_t n = 0, cap = 0;
    uint8_t prefix[VERSION_KEY_MAX];
    size_t plen = version_key(prefix, tenant, 0) - 8;
    MDB_cursor *cur;
    int mrc = mdb_cursor_open(txn, s->versions, &cur);
    if (mrc != 0) {
        read_end(s, txn);
        return pc_err_set(err, PC_E_STORE, "cursor: %s", mdb_strerror(mrc));
    }
    MDB_val key = {plen, prefix}, val;
    for (mrc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE); mrc == 0;
         mrc = mdb_cursor_get(cur, &key, &val, MDB_NEXT)) {
        if (key.mv_size != plen + 8 || memcmp(key.mv_data, prefix, plen) != 0)
            break;
        if (val.mv_size != 8)
            continue;
        if (n + 2 > cap) {
            cap = cap ? cap * 2 : 64;
            uint64_t *grown = realloc(pairs, cap * sizeof(*grown));
            if (grown == NULL) {
                rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
                break;
            }
            pairs = grown;
        }
        pairs[n++] = pc_be64_get((const uint8_t *)key.mv_data + plen);
        pairs[n++] = pc_be64_get(val.mv_data);
    }
    if (rc == PC_OK && mrc != 0 && mrc != MDB_NOTFOUND)
        rc = pc_err_set(err, PC_E_STORE, "walk versions: %s", mdb_strerror(mrc));
    mdb_cursor_close(cur);
    read_end(s, txn);
    for (size_t i = 0; rc == PC_OK && i < n; i += 2) {
        int stop = cb(arg, pairs[i], pairs[i + 1]);
        if (stop != 0)
            rc = walk_stopped(err, stop);
    }
    free(pairs);
    return rc;
}

int pc_store_get_manifest(pc_store *s, uint64_t seq, Popcast__Manifest **out, pc_err *err)
{
    Popcast__LogRecord *rec = NULL;
    int rc = pc_store_get_log(s, seq, &rec, err);
    if (rc != PC_OK)
        return rc;
    *out = rec->signed_ != NULL ? popcast__manifest__unpack(NULL, rec->signed_->manifest.len,
                                                            rec->signed_->manifest.data)
                                : NULL;
    popcast__log_record__free_unpacked(rec, NULL);
    if (*out == NULL)
        return pc_err_set(err, PC_E_STORE, "stored manifest of seq %llu does not decode",
                          (unsigned long long)seq);
    return PC_OK;
}

int pc_store_get_log(pc_store *s, uint64_t seq, Popcast__LogRecord **out, pc_err *err)
{
    *out = NULL;
    MDB_txn *txn;
    int rc = read_begin(s, &txn, err);
    if (rc != PC_OK)
        return rc;
    uint8_t k[8];
    pc_be64_put(k, seq);
    MDB_val key = {8, k}, val;
    int mrc = mdb_get(txn, s->log, &key, &val);
    if (mrc == MDB_NOTFOUND) {
        rc = pc_err_set(err, PC_E_NOTFOUND, "seq %llu is not in the log", (unsigned long long)seq);
    } else if (mrc != 0) {
        rc = pc_err_set(err, PC_E_STORE, "read log: %s", mdb_strerror(mrc));
    } else if ((*out = popcast__log_record__unpack(NULL, val.mv_size, val.mv_data)) == NULL) {
        rc = pc_err_set(err, PC_E_STORE, "corrupt log record at seq %llu", (unsigned long long)seq);
    }
    read_end(s, txn);
    return rc;
}

int pc_store_log_bounds(pc_store *s, uint64_t *first, uint64_t *last, pc_err *err)
{
    *first = *last = 0;
    MDB_txn *txn;
    int rc = read_begin(s, &txn, err);
    if (rc != PC_OK)
        return rc;
    MDB_cursor *cur;
    int mrc = mdb_cursor_open(txn, s->log, &cur);
    if (mrc == 0) {
        MDB_val key, val;
        if (mdb_cursor_get(cur, &key, &val, MDB_FIRST) == 0 && key.mv_size == 8)
            *first = pc_be64_get(key.mv_data);
        if (mdb_cursor_get(cur, &key, &val, MDB_LAST) == 0 && key.mv_size == 8)
            *last = pc_be64_get(key.mv_data);
        mdb_cursor_close(cur);
    } else {
        rc = pc_err_set(err, PC_E_STORE, "cursor: %s", mdb_strerror(mrc));
    }
    /* After a snapshot the log has holes below log_base. */
    uint64_t base = 0;
    if (rc == PC_OK && get_u64(txn, s->meta, "log_base", 8, &base, NULL) == PC_OK &&
        base + 1 > *first)
        *first = base + 1;
    read_end(s, txn);
    return rc;
}

int pc_store_read_blob(pc_store *s, const uint8_t hash[PC_HASH_LEN], uint64_t offset, uint8_t *buf,
                       size_t cap, size_t *got, uint64_t *total, pc_err *err)
{
    *got = 0;
    MDB_txn *txn;
    int rc = read_begin(s, &txn, err);
    if (rc != PC_OK)
        return rc;
    MDB_val key = {PC_HASH_LEN, (void *)hash}, val;
    int mrc = mdb_get(txn, s->blobs, &key, &val);
    if (mrc == MDB_NOTFOUND) {
        rc = pc_err_set(err, PC_E_NOTFOUND, "no bundle with that hash");
    } else if (mrc != 0) {
        rc = pc_err_set(err, PC_E_STORE, "read blob: %s", mdb_strerror(mrc));
    } else if (offset > val.mv_size) {
        rc = pc_err_set(err, PC_E_INVALID, "offset %llu is past the bundle's %zu bytes",
                        (unsigned long long)offset, val.mv_size);
    } else {
        size_t n = val.mv_size - (size_t)offset;
        if (n > cap)
            n = cap;
        memcpy(buf, (const uint8_t *)val.mv_data + offset, n);
        *got = n;
        *total = val.mv_size;
    }
    read_end(s, txn);
    return rc;
}

int pc_store_get_blob(pc_store *s, const uint8_t hash[PC_HASH_LEN], uint8_t **out, size_t *len,
                      pc_err *err)
{
    *out = NULL;
    *len = 0;
    MDB_txn *txn;
    int rc = read_begin(s, &txn, err);
    if (rc != PC_OK)
        return rc;
    MDB_val key = {PC_HASH_LEN, (void *)hash}, val;
    int mrc = mdb_get(txn, s->blobs, &key, &val);
    if (mrc == MDB_NOTFOUND) {
        rc = pc_err_set(err, PC_E_NOTFOUND, "no bundle with that hash");
    } else if (mrc != 0) {
        rc = pc_err_set(err, PC_E_STORE, "read blob: %s", mdb_strerror(mrc));
    } else if ((*out = malloc(val.mv_size ? val.mv_size : 1)) == NULL) {
        rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
    } else {
        memcpy(*out, val.mv_data, val.mv_size);
        *len = val.mv_size;
    }
    read_end(s, txn);
    return rc;
}

bool pc_store_has_blob(pc_store *s, const uint8_t hash[PC_HASH_LEN])
{
    MDB_txn *txn;
    if (read_begin(s, &txn, NULL) != PC_OK)
        return false;
    MDB_val key = {PC_HASH_LEN, (void *)hash}, val;
    bool found = mdb_get(txn, s->blobs, &key, &val) == 0;
    read_end(s, txn);
    return found;
}

int pc_store_meta_get(pc_store *s, const char *key, void *buf, size_t cap, size_t *len, pc_err *err)
{
    MDB_txn *txn;
    int rc = read_begin(s, &txn, err);
    if (rc != PC_OK)
        return rc;
    MDB_val k = {strlen(key), (void *)key}, val;
    int mrc = mdb_get(txn, s->meta, &k, &val);
    if (mrc == MDB_NOTFOUND) {
        rc = pc_err_set(err, PC_E_NOTFOUND, "no %s in the store", key);
    } else if (mrc != 0) {
        rc = pc_err_set(err, PC_E_STORE, "read %s: %s", key, mdb_strerror(mrc));
    } else {
        memcpy(buf, val.mv_data, val.mv_size < cap ? val.mv_size : cap);
        *len = val.mv_size;
    }
    read_end(s, txn);
    return rc;
}

typedef struct meta_args {
    const char *key;
    const void *val;
    size_t len;
} meta_args;

static int meta_body(pc_store *s, MDB_txn *txn, void *arg, pc_err *err)
{
    meta_args *ma = arg;
    MDB_val k = {strlen(ma->key), (void *)ma->key}, v = {ma->len, (void *)ma->val};
    int mrc = mdb_put(txn, s->meta, &k, &v, 0);
    return mrc ? mdb_fail(err, mrc, "write meta") : PC_OK;
}

int pc_store_meta_put(pc_store *s, const char *key, const void *val, size_t len, pc_err *err)
{
    if (key == NULL || key[0] == '\0' || strlen(key) > 200)
        return pc_err_set(err, PC_E_INVALID, "bad meta key");
    meta_args ma = {key, val, len};
    return write_txn(s, meta_body, &ma, err);
}

typedef struct meta_item {
    char *key;
    uint8_t *val;
    size_t len;
} meta_item;

int pc_store_meta_foreach(pc_store *s, const char *prefix,
                          int (*cb)(void *arg, const char *key, const uint8_t *val, size_t len),
                          void *arg, pc_err *err)
{
    pc_err_clear(err);
    MDB_txn *txn;
    int rc = read_begin(s, &txn, err);
    if (rc != PC_OK)
        return rc;
    meta_item *items = NULL;
    size_t n = 0, cap = 0;
    size_t plen = strlen(prefix);
    MDB_cursor *cur = NULL;
    int mrc = mdb_cursor_open(txn, s->meta, &cur);
    MDB_val k = {plen, (void *)prefix}, v;
    if (mrc == 0)
        mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (mrc == 0 && rc == PC_OK && k.mv_size >= plen && memcmp(k.mv_data, prefix, plen) == 0) {
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            meta_item *grown = realloc(items, cap * sizeof(*items));
            if (grown == NULL) {
                rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
                break;
            }
            items = grown;
        }
        items[n].key = malloc(k.mv_size + 1);
        items[n].val = malloc(v.mv_size ? v.mv_size : 1);
        if (items[n].key == NULL || items[n].val == NULL) {
            free(items[n].key);
            free(items[n].val);
            rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
            break;
        }
        memcpy(items[n].key, k.mv_data, k.mv_size);
        items[n].key[k.mv_size] = '\0';
        memcpy(items[n].val, v.mv_data, v.mv_size);
        items[n].len = v.mv_size;
        n++;
        mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (cur != NULL)
        mdb_cursor_close(cur);
    read_end(s, txn);
    if (rc == PC_OK && mrc != 0 && mrc != MDB_NOTFOUND)
        rc = pc_err_set(err, PC_E_STORE, "meta cursor: %s", mdb_strerror(mrc));
    for (size_t i = 0; i < n; i++) {
        if (rc == PC_OK) {
            int stop = cb(arg, items[i].key, items[i].val, items[i].len);
            if (stop != 0)
                rc = walk_stopped(err, stop); /* the rest are only freed */
        }
        free(items[i].key);
        free(items[i].val);
    }
    free(items);
    return rc;
}

int pc_store_file_applied_seq(const char *path, uint64_t *seq, pc_err *err)
{
    *seq = 0;
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi meta;
    int mrc = mdb_env_create(&env);
    if (mrc == 0)
        mrc = mdb_env_set_maxdbs(env, PC_STORE_MAX_DBS);
    /* NOLOCK: no lock file beside it, and nothing written; nothing else
     * opens a backup while it is checked. */
    if (mrc == 0)
        mrc = mdb_env_open(env, path, MDB_RDONLY | MDB_NOSUBDIR | MDB_NOLOCK | MDB_NOTLS, 0600);
    if (mrc == 0) {
        /* LMDB maps the pages its header names without looking at the
         * file's size: reading a page past the end of a cut-short copy
         * (a full disk, a copy interrupted) would kill the process with
         * SIGBUS. Refused here, before any page is read. */
        MDB_envinfo info;
        MDB_stat st;
        struct stat fst;
        mdb_env_info(env, &info);
        mdb_env_stat(env, &st);
        uint64_t needed = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
        if (stat(path, &fst) != 0 || (uint64_t)fst.st_size < needed) {
            mdb_env_close(env);
            return pc_err_set(err, PC_E_STORE,
                              "%s is truncated: its header names %llu bytes of pages, the file "
                              "has %lld",
                              path, (unsigned long long)needed, (long long)fst.st_size);
        }
        mrc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    }
    if (mrc == 0)
        mrc = mdb_dbi_open(txn, "meta", 0, &meta);
    int rc = PC_OK;
    if (mrc == 0) {
        rc = get_u64(txn, meta, APPLIED_SEQ_KEY, APPLIED_SEQ_KEY_LEN, seq, err);
        if (rc == PC_E_NOTFOUND)
            rc = PC_OK; /* a store that applied nothing yet */
    } else {
        rc = pc_err_set(err, PC_E_STORE, "%s is not a popcast store: %s", path, mdb_strerror(mrc));
    }
    if (txn != NULL)
        mdb_txn_abort(txn);
    if (env != NULL)
        mdb_env_close(env);
    return rc;
}

/* madvise(MADV_DONTNEED) on each of this process's mappings of the file
 * fd names; returns the bytes they span. LMDB does not say where its map
 * is (mdb_env_info gives the address only with MDB_FIXEDMAP), so the
 * mappings are found in /proc/self/maps by the file's device and inode. */
static uint64_t release_mappings_of(int fd)
{
    struct stat st;
    FILE *maps = fstat(fd, &st) == 0 ? fopen("/proc/self/maps", "re") : NULL;
    if (maps == NULL)
        return 0;
    uint64_t spanned = 0;
    char line[4352];
    while (fgets(line, sizeof(line), maps) != NULL) {
        unsigned long start, end, inode;
        unsigned dev_major, dev_minor;
        if (sscanf(line, "%lx-%lx %*s %*x %x:%x %lu", &start, &end, &dev_major, &dev_minor,
                   &inode) != 5)
            continue;
        if (inode != (unsigned long)st.st_ino || dev_major != major(st.st_dev) ||
            dev_minor != minor(st.st_dev) || end <= start)
            continue;
        if (madvise((void *)start, end - start, MADV_DONTNEED) == 0)
            spanned += end - start;
    }
    fclose(maps);
    return spanned;
}

uint64_t pc_store_release_pages(pc_store *s)
{
    /* Shared: mdb_env_set_mapsize may move the map only under the
     * exclusive side, and madvise on an address the map left could reach
     * whatever was mapped there next. */
    pthread_rwlock_rdlock(&s->resize);
    mdb_filehandle_t fd;
    uint64_t spanned = mdb_env_get_fd(s->env, &fd) == 0 ? release_mappings_of(fd) : 0;
    pthread_rwlock_unlock(&s->resize);
    return spanned;
}

int pc_store_stats_get(pc_store *s, pc_store_stats *out, pc_err *err)
{
    memset(out, 0, sizeof(*out));
    MDB_txn *txn;
    int rc = read_begin(s, &txn, err);
    if (rc != PC_OK)
        return rc;
    MDB_envinfo info;
    MDB_stat st;
    mdb_env_info(s->env, &info);
    mdb_env_stat(s->env, &st);
    out->map_size = info.me_mapsize;
    out->write_map = s->opt.write_map;
    out->used_bytes = (uint64_t)(info.me_last_pgno + 1) * st.ms_psize;
    if (mdb_stat(txn, s->log, &st) == 0)
        out->entries_log = st.ms_entries;
    if (mdb_stat(txn, s->tenants, &st) == 0)
        out->tenants = st.ms_entries;
    if (mdb_stat(txn, s->blobs, &st) == 0)
        out->blobs = st.ms_entries;
    out->map_grows = atomic_load(&s->grows);
    read_end(s, txn);
    return PC_OK;
}

typedef struct rotation_walk {
    int (*cb)(void *arg, const Popcast__SignedManifest *sm);
    void *arg;
    pc_err *err;
} rotation_walk;

static int rotation_item(void *arg, const char *key, const uint8_t *val, size_t len)
{
    rotation_walk *w = arg;
    Popcast__LogRecord *rec = popcast__log_record__unpack(NULL, len, val);
    if (rec == NULL || rec->signed_ == NULL) {
        if (rec != NULL)
            popcast__log_record__free_unpacked(rec, NULL);
        pc_err_set(w->err, PC_E_STORE, "stored %s does not decode", key);
        return PC_E_STORE;
    }
    int rc = w->cb(w->arg, rec->signed_);
    popcast__log_record__free_unpacked(rec, NULL);
    return rc;
}

int pc_store_foreach_rotation(pc_store *s, int (*cb)(void *arg, const Popcast__SignedManifest *sm),
                              void *arg, pc_err *err)
{
    rotation_walk w = {cb, arg, err};
    return pc_store_meta_foreach(s, PC_STORE_ROTATION_PREFIX, rotation_item, &w, err);
}
