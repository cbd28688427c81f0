/* append_log.c - append-only line files (see append_log.h). */
#include "append_log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json_text.h"

struct pc_append_log {
    pthread_mutex_t lock; /* fd: swapped by reopen while writers write */
    int fd;
    mode_t mode;
    char *what, *path;
};

static int open_file(const pc_append_log *l, int *fd, pc_err *err)
{
    *fd = open(l->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, l->mode);
    if (*fd < 0)
        return pc_err_set(err, PC_E_IO, "%s %s: %s", l->what, l->path, strerror(errno));
    return PC_OK;
}

int pc_append_log_open(pc_append_log **out, const char *what, const char *path, mode_t mode,
                       pc_err *err)
{
    pc_append_log *l = calloc(1, sizeof(*l));
    if (l == NULL || (l->what = strdup(what)) == NULL || (l->path = strdup(path)) == NULL) {
        if (l != NULL)
            free(l->what);
        free(l);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    l->mode = mode;
    int rc = open_file(l, &l->fd, err);
    if (rc != PC_OK) {
        free(l->what);
        free(l->path);
        free(l);
        return rc;
    }
    pthread_mutex_init(&l->lock, NULL);
    *out = l;
    return PC_OK;
}

int pc_append_log_reopen(pc_append_log *l, pc_err *err)
{
    int fd;
    int rc = open_file(l, &fd, err);
    if (rc != PC_OK)
        return rc;
    pthread_mutex_lock(&l->lock);
    int old = l->fd;
    l->fd = fd;
    pthread_mutex_unlock(&l->lock);
    close(old);
    return PC_OK;
}

void pc_append_log_close(pc_append_log *l)
{
    if (l == NULL)
        return;
    close(l->fd);
    pthread_mutex_destroy(&l->lock);
    free(l->what);
    free(l->path);
    free(l);
}

const char *pc_append_log_path(const pc_append_log *l)
{
    return l->path;
}

void pc_append_log_json(pc_append_log *l, json_t *o)
{
    size_t len = 0;
    char *line = pc_json_line(o, &len);
    if (line == NULL)
        return;
    pthread_mutex_lock(&l->lock);
    ssize_t n = write(l->fd, line, len);
    pthread_mutex_unlock(&l->lock);
    (void)n;
    free(line);
}
