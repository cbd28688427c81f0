/* exec_adapter.c - versions as directories, a `current` symlink flipped by
 * rename, and a reload hook (see exec_adapter.h). */
#include "exec_adapter.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bundle.h"
#include "clock.h"
#include "log.h"
#include "names.h"

#define HOOK_TIMEOUT_DEFAULT_MS 10000
#define HOOK_OUTPUT_MAX         2048
#define EXEC_PATH_MAX           4096
#define EXEC_ROOT_MAX           1024 /* leaves room for tenant, version and file paths */
#define EXEC_DIR_MAX            2048

typedef struct live_entry {
    char tenant[PC_TENANT_MAX + 1];
    uint64_t version;
    struct live_entry *next;
} live_entry;

typedef struct exec_adapter {
    pc_adapter base; /* first: the adapter pointer is this pointer */
    char *root, *command, *pidfile;
    int signal;
    uint64_t timeout_ms;
    pthread_mutex_t lock; /* one activation at a time; guards live */
    live_entry *live;
    pc_metric *m_hooks, *m_hook_failures, *m_flips_back;
} exec_adapter;

/* What prepare hands to activate. */
typedef struct exec_prepared {
    char tenant[PC_TENANT_MAX + 1];
    uint64_t version;
    bool created; /* this prepare wrote the directory (discard removes it) */
} exec_prepared;

/* Files. */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return (flag == FTW_DP ? rmdir(path) : unlink(path)) != 0 && errno != ENOENT ? -1 : 0;
}

static int rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -1;
    return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int mkdir_p(char *path)
{
    for (char *p = path + 1; *p != '\0'; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        int rc = mkdir(path, 0755);
        *p = '/';
        if (rc != 0 && errno != EEXIST)
            return -1;
    }
    return mkdir(path, 0755) == 0 || errno == EEXIST ? 0 : -1;
}

static int fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static int write_file(const char *path, const uint8_t *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(fd, data + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            close(fd);
            return -1;
        }
        done += (size_t)n;
    }
    int rc = fsync(fd);
    return close(fd) == 0 && rc == 0 ? 0 : -1;
}

/* Writes every file of the bundle under dir (which exists and is empty).
 * Paths are safe (pc_bundle_open checked them); a file whose path runs
 * through another file's name fails with ENOTDIR. */
static int write_bundle(const char *dir, const pc_bundle *b, pc_err *err)
{
    for (size_t i = 0; i < pc_bundle_file_count(b); i++) {
        const char *rel;
        const uint8_t *data;
        size_t len;
        pc_bundle_file_at(b, i, &rel, &data, &len);
        char path[EXEC_PATH_MAX];
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, rel) >= sizeof(path))
            return pc_err_set(err, PC_E_RUNTIME, "path too long: %s", rel);
        char *slash = strrchr(path, '/');
        *slash = '\0';
        int rc = mkdir_p(path);
        *slash = '/';
        if (rc != 0 || write_file(path, data, len) != 0)
            return pc_err_set(err, PC_E_RUNTIME, "cannot write %s: %s", path, strerror(errno));
    }
    return PC_OK;
}

/* The hook. */

static void child_exec(const char *command, char *const envp[], int out_fd)
{
    setpgid(0, 0); /* the whole group can be killed on timeout */
    dup2(out_fd, 1);
    dup2(out_fd, 2);
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0)
        dup2(null, 0);
    /* Nothing of the agent's (store, sockets) leaks into the hook. */
    syscall(SYS_close_range, 3U, ~0U, 0U);
    char *argv[] = {"sh", "-c", (char *)command, NULL};
    execve("/bin/sh", argv, envp);
    _exit(127);
}

/* Runs the command; returns PC_OK if it exited 0 within the timeout. */
static int run_command(exec_adapter *a, const char *action, const char *tenant, uint64_t version,
                       pc_err *err)
{
    char env_action[64], env_tenant[128], env_version[64], env_dir[EXEC_PATH_MAX + 16],
        env_current[EXEC_PATH_MAX + 16];
    snprintf(env_action, sizeof(env_action), "POPCAST_ACTION=%s", action);
    snprintf(env_tenant, sizeof(env_tenant), "POPCAST_TENANT=%s", tenant);
    snprintf(env_version, sizeof(env_version), "POPCAST_VERSION=%llu", (unsigned long long)version);
    if (version != 0)
        snprintf(env_dir, sizeof(env_dir), "POPCAST_DIR=%s/%s/versions/%llu", a->root, tenant,
                 (unsigned long long)version);
    else
        snprintf(env_dir, sizeof(env_dir), "POPCAST_DIR=");
    snprintf(env_current, sizeof(env_current), "POPCAST_CURRENT=%s/%s/current", a->root, tenant);
    char *envp[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    env_action,
                    env_tenant,
                    env_version,
                    env_dir,
                    env_current,
                    NULL};
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return pc_err_set(err, PC_E_RUNTIME, "reload hook: pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return pc_err_set(err, PC_E_RUNTIME, "reload hook: fork: %s", strerror(errno));
    }
    if (pid == 0)
        child_exec(a->command, envp, fds[1]);
    close(fds[1]);
    char out[HOOK_OUTPUT_MAX + 1];
    size_t out_len = 0;
    int64_t deadline = pc_mono_ms() + (int64_t)a->timeout_ms;
    int status = 0, exited = 0, timed_out = 0;
    for (;;) {
        struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
        if (poll(&pfd, 1, 10) > 0) {
            char buf[512];
            ssize_t n = read(fds[0], buf, sizeof(buf));
            if (n > 0) {
                /* Keep the last HOOK_OUTPUT_MAX bytes: errors come last. */
                size_t take = (size_t)n;
                if (out_len + take > HOOK_OUTPUT_MAX) {
                    size_t drop = out_len + take - HOOK_OUTPUT_MAX;
                    if (drop > out_len)
                        drop = out_len;
                    memmove(out, out + drop, out_len - drop);
                    out_len -= drop;
                }
                if (take > HOOK_OUTPUT_MAX)
                    take = HOOK_OUTPUT_MAX;
                memcpy(out + out_len, buf + (size_t)n - take, take);
                out_len += take;
            }
        }
        if (waitpid(pid, &status, WNOHANG) == pid) {
            exited = 1;
            break;
        }
        if (pc_mono_ms() > deadline) {
            timed_out = 1;
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
    }
    close(fds[0]);
    out[out_len] = '\0';
    while (out_len > 0 && (out[out_len - 1] == '\n' || out[out_len - 1] == '\r'))
        out[--out_len] = '\0';
    if (timed_out)
        return pc_err_set(err, PC_E_RUNTIME, "reload hook timed out after %llu ms%s%s",
                          (unsigned long long)a->timeout_ms, out_len ? ": " : "", out);
    if (exited && WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return PC_OK;
    if (WIFSIGNALED(status))
        return pc_err_set(err, PC_E_RUNTIME, "reload hook killed by signal %d%s%s",
                          WTERMSIG(status), out_len ? ": " : "", out);
    return pc_err_set(err, PC_E_RUNTIME, "reload hook exited with status %d%s%s",
                      WEXITSTATUS(status), out_len ? ": " : "", out);
}

static int send_signal(exec_adapter *a, pc_err *err)
{
    FILE *f = fopen(a->pidfile, "r");
    if (f == NULL)
        return pc_err_set(err, PC_E_RUNTIME, "reload signal: cannot read %s: %s", a->pidfile,
                          strerror(errno));
    long pid = 0;
    int got = fscanf(f, "%ld", &pid);
    fclose(f);
    if (got != 1 || pid <= 1 || pid > INT_MAX)
        return pc_err_set(err, PC_E_RUNTIME, "reload signal: %s does not hold a process id",
                          a->pidfile);
    if (kill((pid_t)pid, a->signal) != 0)
        return pc_err_set(err, PC_E_RUNTIME, "reload signal: process %ld: %s", pid,
                          strerror(errno));
    return PC_OK;
}

static int run_hook(exec_adapter *a, const char *action, const char *tenant, uint64_t version,
                    pc_err *err)
{
    int rc = PC_OK;
    pc_metric_add(a->m_hooks, 1);
    if (a->command != NULL)
        rc = run_command(a, action, tenant, version, err);
    if (rc == PC_OK && a->pidfile != NULL)
        rc = send_signal(a, err);
    if (rc != PC_OK)
        pc_metric_add(a->m_hook_failures, 1);
    return rc;
}

/* The symlink. */

static void tenant_path(exec_adapter *a, const char *tenant, const char *rest, char *out,
                        size_t cap)
{
    snprintf(out, cap, "%s/%s%s%s", a->root, tenant, rest[0] ? "/" : "", rest);
}

/* Points current at target ("versions/N"), atomically: a reader of the
 * link sees the old target or the new one, never neither. */
static int flip(exec_adapter *a, const char *tenant, const char *target, pc_err *err)
{
    char tmp[EXEC_PATH_MAX], current[EXEC_PATH_MAX], dir[EXEC_PATH_MAX];
    tenant_path(a, tenant, ".current.new", tmp, sizeof(tmp));
    tenant_path(a, tenant, "current", current, sizeof(current));
    tenant_path(a, tenant, "", dir, sizeof(dir));
    unlink(tmp);
    if (symlink(target, tmp) != 0 || rename(tmp, current) != 0)
        return pc_err_set(err, PC_E_RUNTIME, "cannot point %s at %s: %s", current, target,
                          strerror(errno));
    fsync_path(dir);
    return PC_OK;
}

static void read_current(exec_adapter *a, const char *tenant, char *out, size_t cap)
{
    char current[EXEC_PATH_MAX];
    tenant_path(a, tenant, "current", current, sizeof(current));
    ssize_t n = readlink(current, out, cap - 1);
    out[n > 0 ? n : 0] = '\0';
}

/* Removes version directories other than the two given targets. */
static void collect_garbage(exec_adapter *a, const char *tenant, const char *keep1,
                            const char *keep2)
{
    char versions[EXEC_DIR_MAX];
    tenant_path(a, tenant, "versions", versions, sizeof(versions));
    char names[64][32];
    size_t n = 0;
    DIR *d = opendir(versions);
    if (d == NULL)
        return;
    /* Collect first: removing while iterating a directory is unspecified. */
    for (struct dirent *de = readdir(d); de != NULL && n < 64; de = readdir(d)) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char target[300];
        snprintf(target, sizeof(target), "versions/%s", de->d_name);
        if (strcmp(target, keep1) == 0 || strcmp(target, keep2) == 0)
            continue;
        snprintf(names[n++], sizeof(names[0]), "%.31s", de->d_name);
    }
    closedir(d);
    for (size_t i = 0; i < n; i++) {
        char path[EXEC_PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s", versions, names[i]);
        rm_rf(path);
    }
}

static void set_live(exec_adapter *a, const char *tenant, uint64_t version)
{
    live_entry **pp = &a->live;
    while (*pp != NULL && strcmp((*pp)->tenant, tenant) != 0)
        pp = &(*pp)->next;
    if (version == 0) {
        if (*pp != NULL) {
            live_entry *gone = *pp;
            *pp = gone->next;
            free(gone);
        }
        return;
    }
    if (*pp == NULL && (*pp = calloc(1, sizeof(**pp))) != NULL)
        snprintf((*pp)->tenant, sizeof((*pp)->tenant), "%s", tenant);
    if (*pp != NULL)
        (*pp)->version = version;
}

/* The adapter. */

static int exec_check(pc_adapter *ad, const pc_version_spec *spec, pc_err *err)
{
    (void)ad;
    pc_bundle *b = NULL;
    int rc = pc_bundle_open(spec->bundle, spec->bundle_len, &b, err);
    pc_bundle_free(b);
    return rc;
}

static int exec_prepare(pc_adapter *ad, const pc_version_spec *spec, pc_prepared **out, pc_err *err)
{
    exec_adapter *a = (exec_adapter *)ad;
    *out = NULL;
    if (!pc_tenant_name_valid(spec->tenant) || spec->version == 0)
        return pc_err_set(err, PC_E_INVALID, "invalid tenant or version");
    pc_bundle *b = NULL;
    if (pc_bundle_open(spec->bundle, spec->bundle_len, &b, err) != PC_OK)
        return PC_E_RUNTIME;
    exec_prepared *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        pc_bundle_free(b);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    snprintf(p->tenant, sizeof(p->tenant), "%s", spec->tenant);
    p->version = spec->version;
    char versions[EXEC_DIR_MAX], final[EXEC_PATH_MAX], tmp[EXEC_PATH_MAX];
    tenant_path(a, spec->tenant, "versions", versions, sizeof(versions));
    snprintf(final, sizeof(final), "%s/%llu", versions, (unsigned long long)spec->version);
    snprintf(tmp, sizeof(tmp), "%s/.tmp-%llu", versions, (unsigned long long)spec->version);
    int rc = PC_OK;
    struct stat st;
    if (stat(final, &st) == 0 && S_ISDIR(st.st_mode)) {
        /* Written completely before (it was renamed into place): reuse. */
    } else if (mkdir_p(versions) != 0) {
        rc = pc_err_set(err, PC_E_RUNTIME, "cannot create %s: %s", versions, strerror(errno));
    } else {
        rm_rf(tmp);
        if (mkdir(tmp, 0755) != 0)
            rc = pc_err_set(err, PC_E_RUNTIME, "cannot create %s: %s", tmp, strerror(errno));
        else if ((rc = write_bundle(tmp, b, err)) == PC_OK) {
            fsync_path(tmp);
            if (rename(tmp, final) != 0)
                rc = pc_err_set(err, PC_E_RUNTIME, "cannot rename %s: %s", tmp, strerror(errno));
            else
                fsync_path(versions);
            p->created = rc == PC_OK;
        }
        if (rc != PC_OK)
            rm_rf(tmp);
    }
    pc_bundle_free(b);
    if (rc != PC_OK) {
        free(p);
        return rc;
    }
    *out = (pc_prepared *)p;
    return PC_OK;
}

static void exec_discard(pc_adapter *ad, pc_prepared *pp)
{
    exec_adapter *a = (exec_adapter *)ad;
    exec_prepared *p = (exec_prepared *)pp;
    if (p == NULL)
        return;
    if (p->created) {
        char path[EXEC_PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s/versions/%llu", a->root, p->tenant,
                 (unsigned long long)p->version);
        rm_rf(path);
    }
    free(p);
}

static int exec_activate(pc_adapter *ad, pc_prepared *pp, pc_err *err)
{
    exec_adapter *a = (exec_adapter *)ad;
    exec_prepared *p = (exec_prepared *)pp;
    pthread_mutex_lock(&a->lock);
    char old[EXEC_PATH_MAX], target[64];
    read_current(a, p->tenant, old, sizeof(old));
    snprintf(target, sizeof(target), "versions/%llu", (unsigned long long)p->version);
    int rc = flip(a, p->tenant, target, err);
    if (rc == PC_OK)
        rc = run_hook(a, "activate", p->tenant, p->version, err);
    if (rc != PC_OK) {
        /* Back to what was current, so the runtime keeps the old code. */
        pc_err ignore;
        if (old[0] != '\0' && strcmp(old, target) != 0)
            flip(a, p->tenant, old, &ignore);
        else if (old[0] == '\0') {
            char current[EXEC_PATH_MAX];
            tenant_path(a, p->tenant, "current", current, sizeof(current));
            unlink(current);
        }
        pc_metric_add(a->m_flips_back, 1);
        pthread_mutex_unlock(&a->lock);
        if (strcmp(old, target) != 0)
            exec_discard(ad, pp);
        else
            free(p);
        return PC_E_RUNTIME;
    }
    set_live(a, p->tenant, p->version);
    collect_garbage(a, p->tenant, target, old);
    pthread_mutex_unlock(&a->lock);
    free(p);
    return PC_OK;
}

static int exec_deactivate(pc_adapter *ad, const char *tenant, pc_err *err)
{
    exec_adapter *a = (exec_adapter *)ad;
    if (!pc_tenant_name_valid(tenant))
        return pc_err_set(err, PC_E_INVALID, "invalid tenant name");
    pthread_mutex_lock(&a->lock);
    char current[EXEC_PATH_MAX], dir[EXEC_PATH_MAX];
    tenant_path(a, tenant, "current", current, sizeof(current));
    tenant_path(a, tenant, "", dir, sizeof(dir));
    struct stat st;
    int had = lstat(current, &st) == 0;
    int rc = PC_OK;
    if (had) {
        unlink(current);
        pc_err herr;
        if (run_hook(a, "deactivate", tenant, 0, &herr) != PC_OK) {
            rc = PC_E_RUNTIME;
            if (err != NULL)
                *err = herr;
        }
    }
    rm_rf(dir);
    set_live(a, tenant, 0);
    pthread_mutex_unlock(&a->lock);
    return rc;
}

static uint64_t exec_live_version(pc_adapter *ad, const char *tenant)
{
    exec_adapter *a = (exec_adapter *)ad;
    pthread_mutex_lock(&a->lock);
    uint64_t v = 0;
    for (live_entry *e = a->live; e != NULL; e = e->next)
        if (strcmp(e->tenant, tenant) == 0)
            v = e->version;
    pthread_mutex_unlock(&a->lock);
    return v;
}

static void exec_destroy(pc_adapter *ad)
{
    exec_adapter *a = (exec_adapter *)ad;
    while (a->live != NULL) {
        live_entry *next = a->live->next;
        free(a->live);
        a->live = next;
    }
    pthread_mutex_destroy(&a->lock);
    free(a->root);
    free(a->command);
    free(a->pidfile);
    free(a);
}

pc_adapter *pc_exec_adapter_new(const pc_exec_options *opt, pc_metrics *metrics, pc_err *err)
{
    if (opt->root == NULL || opt->root[0] != '/' || strlen(opt->root) > EXEC_ROOT_MAX) {
        pc_err_set(err, PC_E_INVALID,
                   "exec adapter: the root must be an absolute path of at most %d bytes",
                   EXEC_ROOT_MAX);
        return NULL;
    }
    if (opt->signal_pidfile != NULL && opt->signal_pidfile[0] != '\0' &&
        (opt->signal <= 0 || opt->signal >= NSIG)) {
        pc_err_set(err, PC_E_INVALID, "exec adapter: invalid reload signal");
        return NULL;
    }
    exec_adapter *a = calloc(1, sizeof(*a));
    if (a == NULL || (a->root = strdup(opt->root)) == NULL) {
        free(a);
        pc_err_set(err, PC_E_NOMEM, "out of memory");
        return NULL;
    }
    if (opt->reload_command != NULL && opt->reload_command[0] != '\0')
        a->command = strdup(opt->reload_command);
    if (opt->signal_pidfile != NULL && opt->signal_pidfile[0] != '\0')
        a->pidfile = strdup(opt->signal_pidfile);
    a->signal = opt->signal;
    a->timeout_ms = opt->hook_timeout_ms ? opt->hook_timeout_ms : HOOK_TIMEOUT_DEFAULT_MS;
    pthread_mutex_init(&a->lock, NULL);
    if (mkdir_p(a->root) != 0) {
        pc_err_set(err, PC_E_IO, "exec adapter: cannot create %s: %s", a->root, strerror(errno));
        exec_destroy(&a->base);
        return NULL;
    }
    if (metrics != NULL) {
        a->m_hooks = pc_metrics_counter(metrics, "popcast_exec_hooks_total", NULL,
                                        "reload hooks run by the exec adapter");
        a->m_hook_failures = pc_metrics_counter(metrics, "popcast_exec_hook_failures_total", NULL,
                                                "reload hooks that failed or timed out");
        a->m_flips_back = pc_metrics_counter(metrics, "popcast_exec_flips_back_total", NULL,
                                             "activations undone because the hook failed");
    }
    a->base.name = "exec";
    a->base.check = exec_check;
    a->base.prepare = exec_prepare;
    a->base.activate = exec_activate;
    a->base.discard = exec_discard;
    a->base.deactivate = exec_deactivate;
    a->base.serve = NULL;
    a->base.live_version = exec_live_version;
    a->base.destroy = exec_destroy;
    return &a->base;
}
