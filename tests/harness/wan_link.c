/* wan_link.c - pc_wan_link, one emulated WAN link between the network
 * namespace it starts in (the core) and a PoP namespace of its own.
 *
 * The WAN testbed (tests/harness/wan.h) wants what `tc netem` gives: one-way
 * delay, jitter, random loss and a rate limit on real packets, so that
 * real TCP stacks on both sides retransmit, back off and reorder their
 * windows as on a WAN. This kernel has no sch_netem (nor sch_fq, which an
 * eBPF departure-time program would need), so the link is made in user
 * space at the packet level instead: a tun device on each side, and every
 * IP packet read from one is written to the other after its delay, or
 * dropped. Nothing above IP is looked at.
 *
 *   pc_wan_link CORE_DEV CORE_ADDR POP_ADDR DELAY_MS JITTER_MS LOSS RATE_KBIT SEED
 *
 * It creates CORE_DEV (a tun device) in the namespace it was started in,
 * with CORE_ADDR and POP_ADDR as its peer; then moves into a new network
 * namespace (the PoP: /proc/PID/ns/net while it runs), brings up lo and a
 * tun device wan0 with POP_ADDR, peer CORE_ADDR; prints "wan link up" and
 * forwards until SIGTERM. Both devices vanish when it exits.
 *
 * Each direction on its own: a packet is lost with probability LOSS (0..1,
 * from a seeded generator, so a run is repeatable given the same packets),
 * else it leaves after waiting for the link (RATE_KBIT, 0 = unlimited) and
 * DELAY_MS plus a uniform jitter of +-JITTER_MS, never before the packet
 * ahead of it (no reordering, as a real path mostly keeps order). A
 * direction's queue holds at most QUEUE_PACKETS; more are dropped at the
 * tail and counted apart from random loss. SIGUSR1 prints the counters. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define QUEUE_PACKETS 4096
#define PACKET_MAX    2048 /* the tun devices' MTU is 1500 */

typedef struct packet {
    int64_t due_us;
    uint16_t len;
    uint8_t data[PACKET_MAX];
} packet;

/* One direction: packets read from `from`, written to `to`. */
typedef struct direction {
    const char *name;
    int from, to;
    packet *queue; /* a ring of QUEUE_PACKETS */
    size_t head, count;
    uint64_t rng;
    int64_t link_free_us; /* when the rate-limited link can start the next packet */
    int64_t last_due_us;  /* keeps order */
    uint64_t passed, lost, tail_dropped, write_failed;
} direction;

static volatile sig_atomic_t stop_requested, stats_requested;

static void on_term(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void on_usr1(int sig)
{
    (void)sig;
    stats_requested = 1;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* splitmix64: small, seedable, good enough for loss and jitter. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* A uniform double in [0, 1). */
static double uniform(uint64_t *state)
{
    return (double)(next_random(state) >> 11) / 9007199254740992.0;
}

/* Runs iproute2's ip with args (no shell: the arguments are passed as
 * they are); 0 when it exited 0. */
static int run_ip(char *const args[])
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        execvp("ip", args);
        fprintf(stderr, "pc_wan_link: cannot run ip: %s (is iproute2 installed?)\n",
                strerror(errno));
        _exit(127);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "pc_wan_link: ip %s %s failed\n", args[1], args[2]);
        return -1;
    }
    return 0;
}

/* A tun device named name in the current network namespace, configured
 * with addr and its point-to-point peer, up. */
static int open_tun(const char *name, const char *addr, const char *peer)
{
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "pc_wan_link: /dev/net/tun: %s\n", strerror(errno));
        return -1;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
    if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
        fprintf(stderr, "pc_wan_link: TUNSETIFF %s: %s\n", name, strerror(errno));
        close(fd);
        return -1;
    }
    char *add[] = {"ip",         "addr", "add",        (char *)addr, "peer",
                   (char *)peer, "dev",  (char *)name, NULL};
    char *up[] = {"ip", "link", "set", (char *)name, "up", NULL};
    if (run_ip(add) != 0 || run_ip(up) != 0) {
        close(fd);
        return -1;
    }
    int flags = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    return fd;
}

static void take_packets(direction *d, int64_t delay_us, int64_t jitter_us, double loss,
                         int64_t rate_bps)
{
    for (;;) {
        uint8_t buf[PACKET_MAX];
        ssize_t got = read(d->from, buf, sizeof(buf));
        if (got <= 0)
            return;
        if (loss > 0 && uniform(&d->rng) < loss) {
            d->lost++;
            continue;
        }
        if (d->count == QUEUE_PACKETS) {
            d->tail_dropped++;
            continue;
        }
        int64_t now = now_us();
        int64_t start = now > d->link_free_us ? now : d->link_free_us;
        if (rate_bps > 0)
            start += (int64_t)got * 8 * 1000000 / rate_bps;
        d->link_free_us = start;
        int64_t jitter = jitter_us > 0
                             ? (int64_t)(uniform(&d->rng) * (double)(2 * jitter_us + 1)) - jitter_us
                             : 0;
        int64_t due = start + delay_us + jitter;
        if (due < d->last_due_us)
            due = d->last_due_us;
        d->last_due_us = due;
        packet *p = &d->queue[(d->head + d->count) % QUEUE_PACKETS];
        p->due_us = due;
        p->len = (uint16_t)got;
        memcpy(p->data, buf, (size_t)got);
        d->count++;
    }
}

/* Writes every packet that is due; returns the earliest due time left
 * (INT64_MAX if none). */
static int64_t send_due(direction *d)
{
    int64_t now = now_us();
    while (d->count > 0) {
        packet *p = &d->queue[d->head];
        if (p->due_us > now)
            return p->due_us;
        if (write(d->to, p->data, p->len) != (ssize_t)p->len)
            d->write_failed++;
        else
            d->passed++;
        d->head = (d->head + 1) % QUEUE_PACKETS;
        d->count--;
    }
    return INT64_MAX;
}

static void print_stats(const direction *dirs)
{
    for (int i = 0; i < 2; i++)
        printf("wan link stats: %s passed %llu lost %llu tail_dropped %llu write_failed %llu\n",
               dirs[i].name, (unsigned long long)dirs[i].passed, (unsigned long long)dirs[i].lost,
               (unsigned long long)dirs[i].tail_dropped, (unsigned long long)dirs[i].write_failed);
    fflush(stdout);
}

/* A whole decimal number in [0, max] (false on anything else). */
static bool whole(const char *text, long long max, long long *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < 0 || v > max)
        return false;
    *out = v;
    return true;
}

static bool device_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n >= IFNAMSIZ)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)name[i]))
            return false;
    return true;
}

int main(int argc, char **argv)
{
    const char *usage = "usage: pc_wan_link CORE_DEV CORE_ADDR POP_ADDR DELAY_MS JITTER_MS LOSS "
                        "RATE_KBIT SEED\n";
    if (argc != 9) {
        fputs(usage, stderr);
        return 2;
    }
    const char *core_dev = argv[1], *core_addr = argv[2], *pop_addr = argv[3];
    long long delay_ms = 0, jitter_ms = 0, rate_kbit = 0, seed_n = 0;
    struct in_addr a4;
    char *loss_end = NULL;
    double loss = strtod(argv[6], &loss_end);
    /* Checked before anything is created: a bad argument changes nothing. */
    if (!device_name_valid(core_dev) || inet_pton(AF_INET, core_addr, &a4) != 1 ||
        inet_pton(AF_INET, pop_addr, &a4) != 1 || !whole(argv[4], 60000, &delay_ms) ||
        !whole(argv[5], delay_ms, &jitter_ms) || loss_end == argv[6] || *loss_end != '\0' ||
        !(loss >= 0 && loss < 1) || !whole(argv[7], 100000000, &rate_kbit) ||
        !whole(argv[8], LLONG_MAX, &seed_n)) {
        fprintf(stderr,
                "pc_wan_link: bad argument: CORE_DEV is 1-15 letters or digits, the addresses "
                "IPv4, 0 <= JITTER_MS <= DELAY_MS <= 60000, 0 <= LOSS < 1, "
                "0 <= RATE_KBIT <= 100000000, SEED a whole number\n%s",
                usage);
        return 2;
    }
    int64_t delay_us = delay_ms * 1000, jitter_us = jitter_ms * 1000;
    int64_t rate_bps = rate_kbit * 1000;
    uint64_t seed = (uint64_t)seed_n;
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    signal(SIGUSR1, on_usr1);
    signal(SIGPIPE, SIG_IGN);
    /* Gone with the test that started it, even if that one crashed. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() == 1)
        return 1;
    /* The signals are taken only inside ppoll, so none arrives between
     * looking at the flags and sleeping. */
    sigset_t blocked, waiting;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGUSR1);
    sigprocmask(SIG_BLOCK, &blocked, &waiting);
    sigdelset(&waiting, SIGTERM);
    sigdelset(&waiting, SIGINT);
    sigdelset(&waiting, SIGUSR1);

    int core = open_tun(core_dev, core_addr, pop_addr);
    if (core < 0)
        return 1;
    if (unshare(CLONE_NEWNET) != 0) {
        fprintf(stderr, "pc_wan_link: unshare(CLONE_NEWNET): %s (needs CAP_SYS_ADMIN)\n",
                strerror(errno));
        return 1;
    }
    char *lo_up[] = {"ip", "link", "set", "lo", "up", NULL};
    if (run_ip(lo_up) != 0)
        return 1;
    int pop = open_tun("wan0", pop_addr, core_addr);
    if (pop < 0)
        return 1;

    static packet queues[2][QUEUE_PACKETS];
    direction dirs[2] = {
        {.name = "core->pop", .from = core, .to = pop, .queue = queues[0], .rng = seed * 2 + 1},
        {.name = "pop->core", .from = pop, .to = core, .queue = queues[1], .rng = seed * 2 + 2},
    };
    printf("wan link up: %s %s <-> %s, one way %lld ms +-%lld ms, loss %.4f, rate %lld kbit/s\n",
           core_dev, core_addr, pop_addr, (long long)(delay_us / 1000),
           (long long)(jitter_us / 1000), loss, (long long)(rate_bps / 1000));
    fflush(stdout);

    while (!stop_requested) {
        if (stats_requested) {
            stats_requested = 0;
            print_stats(dirs);
        }
        int64_t next = INT64_MAX;
        for (int i = 0; i < 2; i++) {
            int64_t due = send_due(&dirs[i]);
            if (due < next)
                next = due;
        }
        struct pollfd pfd[2] = {{.fd = core, .events = POLLIN}, {.fd = pop, .events = POLLIN}};
        struct timespec wait = {.tv_sec = 1, .tv_nsec = 0};
        if (next != INT64_MAX) {
            int64_t left = next - now_us();
            if (left < 0)
                left = 0;
            wait.tv_sec = left / 1000000;
            wait.tv_nsec = (left % 1000000) * 1000;
        }
        int n = ppoll(pfd, 2, &wait, &waiting);
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "pc_wan_link: poll: %s\n", strerror(errno));
            return 1;
        }
        for (int i = 0; i < 2; i++)
            if (n > 0 && (pfd[i].revents & POLLIN))
                take_packets(&dirs[i], delay_us, jitter_us, loss, rate_bps);
    }
    print_stats(dirs);
    close(core);
    close(pop);
    return 0;
}
