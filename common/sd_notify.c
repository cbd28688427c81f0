/* sd_notify.c - the sd_notify(3) datagram protocol (see sd_notify.h). */
#include "sd_notify.h"

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

bool pc_sd_notify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0')
        return false;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    size_t len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof(sa.sun_path))
        return false;
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace */
    socklen_t sa_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    ssize_t n;
    do
        n = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, sa_len);
    while (n < 0 && errno == EINTR);
    close(fd);
    return n == (ssize_t)strlen(state);
}

uint64_t pc_sd_watchdog_usec(void)
{
    const char *usec = getenv("WATCHDOG_USEC");
    const char *pid = getenv("WATCHDOG_PID");
    if (usec == NULL || usec[0] < '0' || usec[0] > '9')
        return 0;
    if (pid != NULL && pid[0] != '\0' && strtoll(pid, NULL, 10) != (long long)getpid())
        return 0; /* meant for another process (our parent's) */
    char *end = NULL;
    unsigned long long v = strtoull(usec, &end, 10);
    return end != NULL && *end == '\0' ? (uint64_t)v : 0;
}

static _Atomic int64_t last_ping_ms;

void pc_sd_watchdog_tick(int64_t now_ms)
{
    static _Atomic int64_t interval_ms = -1; /* -1: not read yet */
    int64_t iv = atomic_load(&interval_ms);
    if (iv < 0) {
        iv = (int64_t)(pc_sd_watchdog_usec() / 1000);
        atomic_store(&interval_ms, iv);
    }
    if (iv == 0 || now_ms - atomic_load(&last_ping_ms) < iv / 2)
        return;
    atomic_store(&last_ping_ms, now_ms);
    pc_sd_notify("WATCHDOG=1");
}
