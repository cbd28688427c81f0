/* wan.c - the WAN testbed (see wan.h). */
#include "wan.h"

#include <errno.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

void pc_wan_enter_core(void)
{
    if (unshare(CLONE_NEWNET) != 0)
        fail_msg("WAN testbed: unshare(CLONE_NEWNET) failed: %s; it needs root (CAP_SYS_ADMIN, "
                 "CAP_NET_ADMIN)",
                 strerror(errno));
    if (system("ip link set lo up") != 0)
        fail_msg("WAN testbed: `ip link set lo up` failed (is iproute2 installed?)");
}

void pc_wan_add_pop(pc_wan_pop *pop, int index, const char *name, const pc_wan_spec *spec,
                    unsigned seed)
{
    assert_true(index >= 1 && index <= 200);
    memset(pop, 0, sizeof(*pop));
    snprintf(pop->name, sizeof(pop->name), "%s", name);
    snprintf(pop->core_addr, sizeof(pop->core_addr), "10.77.%d.1", index);
    snprintf(pop->pop_addr, sizeof(pop->pop_addr), "10.77.%d.2", index);
    const char *bin = getenv("POPCAST_WAN_LINK_BIN");
    if (bin == NULL)
        fail_msg("POPCAST_WAN_LINK_BIN is not set (run the tests through ctest)");
    char dir[300], log[400], dev[16], delay[16], jitter[16], loss[32], rate[16], seed_s[16];
    pc_test_tmpdir(dir, sizeof(dir), "wan");
    snprintf(log, sizeof(log), "%s/link-%s.log", dir, name);
    snprintf(dev, sizeof(dev), "wan%d", index);
    snprintf(delay, sizeof(delay), "%d", spec->delay_ms);
    snprintf(jitter, sizeof(jitter), "%d", spec->jitter_ms);
    snprintf(loss, sizeof(loss), "%.6f", spec->loss);
    snprintf(rate, sizeof(rate), "%d", spec->rate_kbit);
    snprintf(seed_s, sizeof(seed_s), "%u", seed);
    char *argv[] = {(char *)bin, dev,  pop->core_addr, pop->pop_addr, delay,
                    jitter,      loss, rate,           seed_s,        NULL};
    /* The link starts in the core, whatever was placed last. */
    pc_test_place(NULL, NULL);
    pop->link = pc_proc_spawn(name, argv, log);
    pop->link->outlives_env = true;
    pc_test_wait_log(pop->link, "wan link up", 1);
    snprintf(pop->netns, sizeof(pop->netns), "/proc/%d/ns/net", (int)pop->link->pid);
}

void pc_wan_pop_counts(pc_wan_pop *pop, uint64_t *passed, uint64_t *lost)
{
    int before = pc_test_log_count(pop->link, "wan link stats:");
    kill(pop->link->pid, SIGUSR1);
    /* One line per direction. */
    pc_test_wait_log(pop->link, "wan link stats:", before + 2);
    size_t len = 0;
    char *text = pc_test_read_file(pop->link->log, &len);
    *passed = 0;
    *lost = 0;
    /* The last two stats lines are the ones just asked for. */
    char *lines[2] = {NULL, NULL};
    for (char *at = strstr(text, "wan link stats:"); at != NULL;
         at = strstr(at + 1, "wan link stats:")) {
        lines[0] = lines[1];
        lines[1] = at;
    }
    for (int i = 0; i < 2; i++) {
        unsigned long long p = 0, l = 0;
        assert_non_null(lines[i]);
        const char *pass_at = strstr(lines[i], " passed ");
        const char *lost_at = strstr(lines[i], " lost ");
        assert_non_null(pass_at);
        assert_non_null(lost_at);
        p = strtoull(pass_at + 8, NULL, 10);
        l = strtoull(lost_at + 6, NULL, 10);
        *passed += p;
        *lost += l;
    }
    free(text);
}

void pc_wan_remove_pop(pc_wan_pop *pop)
{
    if (pop->link == NULL)
        return;
    pc_proc_stop(pop->link);
    pc_proc_free(pop->link);
    pop->link = NULL;
}
