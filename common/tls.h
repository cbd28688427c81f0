/* tls.h - TLS for popcast's nng links (tls+tcp://) and HTTP (https://),
 * from PEM files. A listener gets the server's certificate and key; a
 * dialer gets the CA that must have signed the server's certificate and
 * the name to check it against, and refuses any other peer.
 *
 * Plaintext (tcp://, http://) is refused unless allowed explicitly: the
 * daemons' allow_plaintext option, meant for local development and tests. */
#ifndef PC_TLS_H
#define PC_TLS_H

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>
#include <stdbool.h>

#include "crypto.h"
#include "err.h"

/* cert_key_file: one PEM file holding the certificate (chain) and key. */
int pc_tls_server_config(const char *cert_key_file, nng_tls_config **out, pc_err *err);
/* ca_file: PEM CA certificate(s); server_name: the name the server's
 * certificate must carry. */
int pc_tls_client_config(const char *ca_file, const char *server_name, nng_tls_config **out,
                         pc_err *err);

/* A TLS file's content as it was loaded. nng cannot change a TLS
 * configuration once a listener or dialer uses it (nng 1.5.2, tls_common.c:
 * a busy config refuses new certificates), so the files are read at start
 * only; the stamp lets SIGHUP tell the operator a file changed since and
 * needs a restart. */
typedef struct pc_tls_stamp {
    const char *path; /* NULL: no file, nothing to report */
    uint8_t hash[PC_HASH_LEN];
    bool readable;
} pc_tls_stamp;
void pc_tls_stamp_take(pc_tls_stamp *s, const char *path);
/* SIGHUP: logs (as component) whether the file what (e.g. "TLS
 * certificate") still holds what was loaded: info if so, a warning that
 * a restart is needed if not. */
void pc_tls_stamp_report(const pc_tls_stamp *s, const char *component, const char *what);

bool pc_url_is_tls(const char *url);

/* Checks a URL against the TLS policy: a TLS URL needs cfg; a plaintext
 * URL needs allow_plaintext. */
int pc_tls_check_url(const char *url, const nng_tls_config *cfg, bool allow_plaintext,
                     const char *what, pc_err *err);

/* nng_listen / nng_dial with cfg applied to TLS URLs. flags as for nng. */
int pc_nng_listen(nng_socket s, const char *url, nng_tls_config *cfg, pc_err *err);
/* pc_nng_listen that also writes into bound (cap bytes) the URL it is
 * listening on: url with the port the kernel chose when url names port 0
 * (the same url otherwise). */
int pc_nng_listen_bound(nng_socket s, const char *url, nng_tls_config *cfg, char *bound, size_t cap,
                        pc_err *err);
/* url ("scheme://host:port[path]") with its port replaced by port, into
 * out. PC_E_INVALID if url does not parse or out is too small. */
int pc_url_with_port(const char *url, int port, char *out, size_t cap, pc_err *err);
int pc_nng_dial(nng_socket s, const char *url, nng_tls_config *cfg, int flags, pc_err *err);

#endif
