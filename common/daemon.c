/* daemon.c - shared daemon start-up (see daemon.h). */
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crypto.h"
#include "log.h"

#ifndef POPCAST_VERSION
#define POPCAST_VERSION "unknown"
#endif

/* The command line, read again on SIGHUP. */
static int start_argc;
static char **start_argv;

/* A handler, not SIG_IGN: an ignored signal stays ignored in the
 * processes a daemon starts (the exec runtime's hooks), a handler does
 * not. */
static void sighup_before_ready(int sig)
{
    (void)sig;
}

void pc_daemon_build_info(pc_metrics *m, const char *daemon)
{
    char labels[128];
    snprintf(labels, sizeof(labels), "daemon=\"%s\",version=\"%s\"", daemon, POPCAST_VERSION);
    pc_metric_set(pc_metrics_gauge(m, "popcast_build_info", labels,
                                   "1, labelled with the daemon and the popcast version it runs"),
                  1);
}

/* The value of string option name in cfg, or NULL (unset, or no such
 * option in this daemon's table). */
static const char *option_text(const pc_cfg_option *opts, const void *cfg, const char *name)
{
    for (size_t i = 0; opts[i].name != NULL; i++)
        if (opts[i].type == PC_CFG_STRING && strcmp(opts[i].name, name) == 0)
            return *(char *const *)((const char *)cfg + opts[i].offset);
    return NULL;
}

int pc_daemon_configure(const char *program, const pc_cfg_option *opts, void *cfg, int argc,
                        char **argv, char *const *log_level)
{
    signal(SIGPIPE, SIG_IGN);
    struct sigaction hup;
    memset(&hup, 0, sizeof(hup));
    hup.sa_handler = sighup_before_ready;
    sigemptyset(&hup.sa_mask);
    sigaction(SIGHUP, &hup, NULL);
    start_argc = argc;
    start_argv = argv;
    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        printf("%s %s\n", program, POPCAST_VERSION);
        return PC_DAEMON_EXIT_OK;
    }
    if (pc_crypto_init() != PC_OK) {
        fprintf(stderr, "%s: libsodium failed to initialise\n", program);
        return PC_DAEMON_FAIL;
    }
    /* PROGRAM --check-config [the usual flags]: load, judge, say so. */
    bool check_only = argc >= 2 && strcmp(argv[1], "--check-config") == 0;
    char *shifted[256];
    if (check_only && argc > 256) {
        fprintf(stderr, "%s: too many arguments\n", program);
        return PC_DAEMON_FAIL;
    }
    if (check_only) {
        shifted[0] = argv[0];
        for (int i = 2; i < argc; i++)
            shifted[i - 1] = argv[i];
        argv = shifted;
        argc--;
    }
    pc_err err;
    int rc = pc_config_load(opts, cfg, argc, argv, &err);
    if (rc == 1)
        return PC_DAEMON_EXIT_OK;
    if (rc != PC_OK) {
        fprintf(stderr, "%s: %s\n", program, err.msg);
        return PC_DAEMON_FAIL;
    }
    enum pc_log_level level;
    if (pc_log_parse_level(*log_level, &level) != 0) {
        fprintf(stderr, "%s: log_level must be debug, info, warn or error\n", program);
        return PC_DAEMON_FAIL;
    }
    /* log_format, when the daemon has one (all do). */
    enum pc_log_format format = PC_LOG_TEXT;
    const char *format_name = option_text(opts, cfg, "log_format");
    if (format_name != NULL && pc_log_parse_format(format_name, &format) != 0) {
        fprintf(stderr, "%s: log_format must be text or json\n", program);
        return PC_DAEMON_FAIL;
    }
    if (check_only) {
        printf("%s: configuration OK (names, types and ranges; addresses, keys and files are "
               "checked when it starts)\n",
               program);
        return PC_DAEMON_EXIT_OK;
    }
    pc_log_set_level(level);
    pc_log_set_format(format);
    return PC_DAEMON_RUN;
}

void pc_daemon_reload(const char *component, const pc_cfg_option *opts, size_t cfg_size,
                      size_t log_level_offset)
{
    void *cfg = calloc(1, cfg_size);
    if (cfg == NULL) {
        pc_warn(component, "SIGHUP: out of memory: nothing changed");
        return;
    }
    pc_err err;
    enum pc_log_level level;
    if (pc_config_load(opts, cfg, start_argc, start_argv, &err) != PC_OK) {
        pc_warn(component, "SIGHUP: the configuration does not load (%s): nothing changed",
                err.msg);
    } else {
        const char *text = *(char *const *)((const char *)cfg + log_level_offset);
        if (text == NULL || pc_log_parse_level(text, &level) != 0) {
            pc_warn(component, "SIGHUP: log_level must be debug, info, warn or error: nothing "
                               "changed");
        } else {
            enum pc_log_format format = PC_LOG_TEXT;
            const char *format_name = option_text(opts, cfg, "log_format");
            if (format_name != NULL && pc_log_parse_format(format_name, &format) != 0) {
                pc_warn(component, "SIGHUP: log_format must be text or json: nothing changed");
            } else {
                pc_log_set_level(level);
                pc_log_set_format(format);
                pc_info(component,
                        "SIGHUP: configuration read again: log_level is %s, log_format %s; "
                        "every other option takes effect at the next restart",
                        text, format == PC_LOG_JSON ? "json" : "text");
            }
        }
    }
    pc_config_free(opts, cfg);
    free(cfg);
}

int pc_daemon_ensure_dir(const char *path, pc_err *err)
{
    char buf[4096];
    if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
        return pc_err_set(err, PC_E_INVALID, "path too long: %.64s...", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST)
                return pc_err_set(err, PC_E_IO, "cannot create %s: %s", buf, strerror(errno));
            *p = '/';
        }
    }
    if (mkdir(buf, 0700) != 0 && errno != EEXIST)
        return pc_err_set(err, PC_E_IO, "cannot create %s: %s", buf, strerror(errno));
    return PC_OK;
}

int pc_daemon_remove_ready(const char *path, pc_err *err)
{
    if (unlink(path) != 0 && errno != ENOENT)
        return pc_err_set(err, PC_E_IO, "ready_file %s: cannot remove the old one: %s", path,
                          strerror(errno));
    return PC_OK;
}

/* fsync of the directory holding path, so the rename is durable. */
static int sync_parent(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof(buf), "%s", path);
    int fd = open(dirname(buf), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int pc_daemon_write_ready(const char *path, const json_t *doc, pc_err *err)
{
    char tmp[4200];
    if (snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", path, (long)getpid()) >= (int)sizeof(tmp))
        return pc_err_set(err, PC_E_INVALID, "ready_file path too long: %.64s...", path);
    char *text = json_dumps(doc, JSON_COMPACT);
    if (text == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        free(text);
        return pc_err_set(err, PC_E_IO, "ready_file: cannot create %s: %s", tmp, strerror(errno));
    }
    size_t len = strlen(text);
    text[len] = '\n'; /* json_dumps' NUL becomes the last line's end */
    size_t done = 0;
    int rc = PC_OK;
    while (done < len + 1) {
        ssize_t n = write(fd, text + done, len + 1 - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = pc_err_set(err, PC_E_IO, "ready_file: cannot write %s: %s", tmp,
                            n < 0 ? strerror(errno) : "short write");
            break;
        }
        done += (size_t)n;
    }
    free(text);
    /* The mode does not depend on the umask: readers may run as others. */
    if (rc == PC_OK && (fchmod(fd, 0644) != 0 || fsync(fd) != 0))
        rc = pc_err_set(err, PC_E_IO, "ready_file: cannot sync %s: %s", tmp, strerror(errno));
    if (close(fd) != 0 && rc == PC_OK)
        rc = pc_err_set(err, PC_E_IO, "ready_file: cannot close %s: %s", tmp, strerror(errno));
    if (rc == PC_OK && rename(tmp, path) != 0)
        rc = pc_err_set(err, PC_E_IO, "ready_file: cannot rename %s to %s: %s", tmp, path,
                        strerror(errno));
    if (rc != PC_OK) {
        unlink(tmp);
        return rc;
    }
    if (sync_parent(path) != 0)
        return pc_err_set(err, PC_E_IO, "ready_file: cannot sync the directory of %s: %s", path,
                          strerror(errno));
    return PC_OK;
}

/* The watchdog's state: armed once, disarmed once, by any threads. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond; /* signalled on disarm; waits on CLOCK_MONOTONIC */
    bool armed, disarmed;
    pthread_t thread;
    struct timespec deadline;
    uint64_t timeout_ms;
    char component[32];
} dog = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void *watchdog_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&dog.lock);
    int rc = 0;
    while (!dog.disarmed && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&dog.cond, &dog.lock, &dog.deadline);
    bool fire = !dog.disarmed;
    pthread_mutex_unlock(&dog.lock);
    if (fire) {
        pc_error(dog.component,
                 "the orderly stop did not finish within %llu ms (shutdown_timeout_ms): giving "
                 "up, exiting with status %d (the store is crash safe)",
                 (unsigned long long)dog.timeout_ms, PC_DAEMON_EXIT_STOP_TIMEOUT);
        _exit(PC_DAEMON_EXIT_STOP_TIMEOUT);
    }
    return NULL;
}

void pc_daemon_watchdog_arm(const char *component, uint64_t timeout_ms)
{
    if (timeout_ms == 0)
        return;
    pthread_mutex_lock(&dog.lock);
    if (dog.armed || dog.disarmed) {
        pthread_mutex_unlock(&dog.lock);
        return;
    }
    snprintf(dog.component, sizeof(dog.component), "%s", component);
    dog.timeout_ms = timeout_ms;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&dog.cond, &attr);
    pthread_condattr_destroy(&attr);
    clock_gettime(CLOCK_MONOTONIC, &dog.deadline);
    dog.deadline.tv_sec += (time_t)(timeout_ms / 1000);
    dog.deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dog.deadline.tv_nsec >= 1000000000L) {
        dog.deadline.tv_sec++;
        dog.deadline.tv_nsec -= 1000000000L;
    }
    int rc = pthread_create(&dog.thread, NULL, watchdog_main, NULL);
    if (rc == 0)
        dog.armed = true;
    else
        pthread_cond_destroy(&dog.cond);
    pthread_mutex_unlock(&dog.lock);
    if (rc != 0)
        pc_warn(component, "cannot start the shutdown watchdog (%s): this stop is not bounded",
                strerror(rc));
}

void pc_daemon_watchdog_disarm(void)
{
    pthread_mutex_lock(&dog.lock);
    bool armed = dog.armed;
    dog.disarmed = true;
    if (armed)
        pthread_cond_signal(&dog.cond);
    pthread_mutex_unlock(&dog.lock);
    if (armed) {
        pthread_join(dog.thread, NULL);
        pthread_cond_destroy(&dog.cond);
    }
}
