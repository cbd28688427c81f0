/* publisher.c - nng pub socket (see publisher.h). */
#include "publisher.h"

#include "tls.h"

#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "log.h"
#include "nng_close.h"

struct pc_publisher {
    nng_socket sock;
    _Atomic uint64_t sent, failed;
    char bound_url[300];
};

int pc_publisher_open(pc_publisher **out, const char *url, nng_tls_config *tls, int sendbuf,
                      size_t max_msg, pc_err *err)
{
    pc_publisher *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    int rv = nng_pub0_open(&p->sock);
    if (rv == 0)
        rv = nng_socket_set_int(p->sock, NNG_OPT_SENDBUF, sendbuf);
    /* The pub socket never receives; the limit only guards the socket. */
    if (rv == 0)
        rv = nng_socket_set_size(p->sock, NNG_OPT_RECVMAXSZ, 1024);
    (void)max_msg;
    if (rv != 0) {
        nng_close(p->sock);
        free(p);
        return pc_err_set(err, PC_E_UNAVAILABLE, "cannot publish on %s: %s", url, nng_strerror(rv));
    }
    if (pc_nng_listen_bound(p->sock, url, tls, p->bound_url, sizeof(p->bound_url), err) != PC_OK) {
        nng_close(p->sock);
        free(p);
        return PC_E_UNAVAILABLE;
    }
    *out = p;
    return PC_OK;
}

const char *pc_publisher_bound_url(const pc_publisher *p)
{
    return p->bound_url;
}

void pc_publisher_close(pc_publisher *p)
{
    if (p == NULL)
        return;
    pc_nng_close_bounded(p->sock, PC_NNG_CLOSE_MS, "the publisher");
    free(p);
}

static int send_publication(pc_publisher *p, const Popcast__Publication *pub, pc_err *err)
{
    size_t len = popcast__publication__get_packed_size(pub);
    nng_msg *msg = NULL;
    int rv = nng_msg_alloc(&msg, len);
    if (rv != 0) {
        atomic_fetch_add(&p->failed, 1);
        return pc_err_set(err, PC_E_NOMEM, "cannot allocate %zu byte message", len);
    }
    popcast__publication__pack(pub, nng_msg_body(msg));
    rv = nng_sendmsg(p->sock, msg, NNG_FLAG_NONBLOCK);
    if (rv != 0) {
        nng_msg_free(msg);
        atomic_fetch_add(&p->failed, 1);
        return pc_err_set(err, PC_E_UNAVAILABLE, "publish failed: %s", nng_strerror(rv));
    }
    atomic_fetch_add(&p->sent, 1);
    return PC_OK;
}

int pc_publisher_send_entry(pc_publisher *p, const Popcast__Entry *e, pc_err *err)
{
    Popcast__Publication pub = POPCAST__PUBLICATION__INIT;
    pub.body_case = POPCAST__PUBLICATION__BODY_ENTRY;
    pub.entry = (Popcast__Entry *)e;
    return send_publication(p, &pub, err);
}

int pc_publisher_send_heartbeat(pc_publisher *p, const Popcast__SignedHeartbeat *hb, pc_err *err)
{
    Popcast__Publication pub = POPCAST__PUBLICATION__INIT;
    pub.body_case = POPCAST__PUBLICATION__BODY_HEARTBEAT;
    pub.heartbeat = (Popcast__SignedHeartbeat *)hb;
    return send_publication(p, &pub, err);
}

void pc_publisher_counts(pc_publisher *p, uint64_t *sent, uint64_t *failed)
{
    *sent = atomic_load(&p->sent);
    *failed = atomic_load(&p->failed);
}
