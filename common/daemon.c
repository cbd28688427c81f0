/* daemon.c - shared daemon start-up (see daemon.h). */
#include "daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

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
