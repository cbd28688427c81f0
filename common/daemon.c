/* daemon.c - shared daemon start-up (see daemon.h). */
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto.h"
#include "log.h"

int pc_daemon_configure(const char *program, const pc_cfg_option *opts, void *cfg, int argc,
                        char **argv, char *const *log_level)
{
    signal(SIGPIPE, SIG_IGN);
    if (pc_crypto_init() != PC_OK) {
        fprintf(stderr, "%s: libsodium failed to initialise\n", program);
        return PC_DAEMON_FAIL;
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
    pc_log_set_level(level);
    return PC_DAEMON_RUN;
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
