/* wan.h - the WAN testbed: controllers in one network namespace (the
 * core), each PoP in a namespace of its own, joined to the core by an
 * emulated link with one-way delay, jitter, loss and a rate limit
 * (pc_wan_link, tests/harness/wan_link.c: this kernel has no netem, so
 * the link works on real IP packets in user space; docs/testing.md "WAN
 * testbed").
 *
 * Usage: pc_wan_enter_core() first (before anything binds a socket), then
 * pc_wan_add_pop for each PoP, then pc_test_place(NULL, "0.0.0.0") before
 * starting controllers and pc_test_place(pop.netns, pop.pop_addr) before
 * starting a PoP's relay and agents. A PoP's daemons reach the
 * controllers at pop.core_addr; the test reaches theirs at pop.pop_addr,
 * through the link. Needs root (network namespaces, tun devices) and
 * iproute2's `ip`. */
#ifndef PC_WAN_H
#define PC_WAN_H

#include <stdint.h>

#include "harness.h"

typedef struct pc_wan_spec {
    int delay_ms;  /* one way: the RTT to the core is twice this */
    int jitter_ms; /* +- on each packet, order kept */
    double loss;   /* per packet and direction, 0..1 */
    int rate_kbit; /* each direction; 0: unlimited */
} pc_wan_spec;

typedef struct pc_wan_pop {
    char name[16];
    char core_addr[20], pop_addr[20];
    char netns[64]; /* /proc/PID/ns/net of the link, the PoP's namespace */
    pc_proc *link;
} pc_wan_pop;

/* Moves this process (and so everything it starts later) into a new
 * network namespace with lo up: the core. Fails the test, saying what is
 * missing, if it cannot. */
void pc_wan_enter_core(void);
/* Builds PoP number index (1..200; it names the link's addresses
 * 10.77.index.1 in the core and .2 in the PoP) with spec, its loss and
 * jitter drawn from seed. Fails the test if the link does not come up.
 * Leaves the place (pc_test_place) at the core. */
void pc_wan_add_pop(pc_wan_pop *pop, int index, const char *name, const pc_wan_spec *spec,
                    unsigned seed);
/* What the link has done so far, both directions summed: packets passed
 * on and packets lost on purpose. */
void pc_wan_pop_counts(pc_wan_pop *pop, uint64_t *passed, uint64_t *lost);
/* Takes the link (and the PoP's namespace, once its daemons are gone)
 * down. */
void pc_wan_remove_pop(pc_wan_pop *pop);

#endif
