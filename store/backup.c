/* backup.c - store backups and restores (see backup.h). */
#include "backup.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store.h"

/* The applied seq of the store in dir (opened and closed again). */
static int applied_seq_of(const char *dir, uint64_t *seq, pc_err *err)
{
    pc_store *s = NULL;
    pc_store_options opt = {0};
    int rc = pc_store_open(&s, dir, &opt, err);
    if (rc == PC_OK)
        rc = pc_store_applied_seq(s, seq, err);
    pc_store_close(s);
    return rc;
}

int pc_store_backup(const char *dir, const char *out_path, uint64_t *seq, pc_err *err)
{
    char partial[4200];
    if ((size_t)snprintf(partial, sizeof(partial), "%s.partial", out_path) >= sizeof(partial))
        return pc_err_set(err, PC_E_INVALID, "backup path too long");
    if (access(out_path, F_OK) == 0)
        return pc_err_set(err, PC_E_EXISTS, "%s exists: a backup never overwrites a file",
                          out_path);
    MDB_env *env = NULL;
    int mrc = mdb_env_create(&env);
    if (mrc == 0)
        mrc = mdb_env_set_maxdbs(env, PC_STORE_MAX_DBS);
    /* Read only, beside the daemon that owns the store: LMDB allows any
     * number of reader processes next to its one writer. */
    if (mrc == 0)
        mrc = mdb_env_open(env, dir, MDB_RDONLY | MDB_NOTLS, 0600);
    if (mrc != 0) {
        if (env != NULL)
            mdb_env_close(env);
        return pc_err_set(err, PC_E_STORE, "cannot open the store in %s: %s", dir,
                          mdb_strerror(mrc));
    }
    int fd = open(partial, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        mdb_env_close(env);
        return pc_err_set(err, e == EEXIST ? PC_E_EXISTS : PC_E_IO, "cannot create %s: %s%s",
                          partial, strerror(e),
                          e == EEXIST ? " (another backup is writing it, or one failed: remove it)"
                                      : "");
    }
    mrc = mdb_env_copyfd2(env, fd, MDB_CP_COMPACT);
    mdb_env_close(env);
    int rc = PC_OK;
    if (mrc != 0)
        rc = pc_err_set(err, PC_E_STORE, "copying the store: %s", mdb_strerror(mrc));
    else if (fsync(fd) != 0)
        rc = pc_err_set(err, PC_E_IO, "syncing %s: %s", partial, strerror(errno));
    close(fd);
    /* What the copy holds, read from the copy itself, read only, before it
     * takes its name: a copy that does not check out never appears at
     * out_path. */
    if (rc == PC_OK)
        rc = pc_store_file_applied_seq(partial, seq, err);
    /* link, not rename: it fails rather than replace a file that appeared
     * at out_path meanwhile. */
    if (rc == PC_OK && link(partial, out_path) != 0)
        rc = pc_err_set(err, errno == EEXIST ? PC_E_EXISTS : PC_E_IO, "cannot create %s: %s",
                        out_path, strerror(errno));
    unlink(partial);
    return rc;
}

int pc_store_restore(const char *backup_path, const char *dir, uint64_t *seq, pc_err *err)
{
    char data[4200];
    if ((size_t)snprintf(data, sizeof(data), "%s/data.mdb", dir) >= sizeof(data))
        return pc_err_set(err, PC_E_INVALID, "data directory path too long");
    if (access(data, F_OK) == 0)
        return pc_err_set(err, PC_E_EXISTS,
                          "%s already holds a store: restore into an empty data directory", dir);
    int in = open(backup_path, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return pc_err_set(err, PC_E_IO, "cannot open %s: %s", backup_path, strerror(errno));
    struct stat st;
    if (fstat(in, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
        close(in);
        /* LMDB would take an empty file for a new, empty store. */
        return pc_err_set(err, PC_E_INVALID,
                          "%s is not a popcast store backup (empty, or not "
                          "a regular file)",
                          backup_path);
    }
    /* Checked before anything is written into dir. */
    pc_err why;
    if (pc_store_file_applied_seq(backup_path, seq, &why) != PC_OK) {
        close(in);
        return pc_err_set(err, PC_E_INVALID, "%s is not a popcast store backup: %s", backup_path,
                          why.msg);
    }
    int out = open(data, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (out < 0) {
        int e = errno;
        close(in);
        return pc_err_set(err, PC_E_IO, "cannot create %s: %s", data, strerror(e));
    }
    int rc = PC_OK;
    char buf[1 << 16];
    for (;;) {
        ssize_t n = read(in, buf, sizeof(buf));
        if (n == 0)
            break;
        if (n < 0 || write(out, buf, (size_t)n) != n) {
            rc = pc_err_set(err, PC_E_IO, "copying %s to %s: %s", backup_path, data,
                            strerror(errno));
            break;
        }
    }
    if (rc == PC_OK && fsync(out) != 0)
        rc = pc_err_set(err, PC_E_IO, "syncing %s: %s", data, strerror(errno));
    close(in);
    close(out);
    if (rc == PC_OK) {
        /* The copy in place opens as the daemon will open it. */
        if (applied_seq_of(dir, seq, &why) != PC_OK)
            rc = pc_err_set(err, PC_E_INVALID, "%s is not a popcast store backup: %s", backup_path,
                            why.msg);
    }
    if (rc != PC_OK) {
        char lock[4300], plock[4300];
        snprintf(lock, sizeof(lock), "%s/lock.mdb", dir);
        snprintf(plock, sizeof(plock), "%s/popcast.lock", dir);
        unlink(data);
        unlink(lock);
        unlink(plock);
    }
    return rc;
}
