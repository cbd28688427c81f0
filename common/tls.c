/* tls.c - TLS configuration for nng links and HTTP (see tls.h). */
#include "tls.h"

#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* The file's hash (libsodium's BLAKE2b, streamed: no size limit, no
 * copy of the file); false with errno set if it cannot be read. */
static bool hash_file(const char *path, uint8_t out[PC_HASH_LEN])
{
    FILE *f = fopen(path, "rbe");
    if (f == NULL)
        return false;
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, PC_HASH_LEN);
    uint8_t buf[1 << 14];
    size_t got;
    while ((got = fread(buf, 1, sizeof(buf), f)) > 0)
        crypto_generichash_update(&st, buf, got);
    bool ok = !ferror(f);
    int e = errno;
    fclose(f);
    if (!ok) {
        errno = e;
        return false;
    }
    crypto_generichash_final(&st, out, PC_HASH_LEN);
    return true;
}

void pc_tls_stamp_take(pc_tls_stamp *s, const char *path)
{
    memset(s, 0, sizeof(*s));
    s->path = path;
    if (path != NULL)
        s->readable = hash_file(path, s->hash);
}

void pc_tls_stamp_report(const pc_tls_stamp *s, const char *component, const char *what)
{
    if (s->path == NULL)
        return;
    uint8_t now[PC_HASH_LEN];
    bool readable = hash_file(s->path, now);
    if (!readable) {
        pc_warn(component,
                "SIGHUP: %s %s cannot be read now (%s): the one loaded at start stays in use, and "
                "a restart would fail until it can be read",
                what, s->path, strerror(errno));
        return;
    }
    if (s->readable && memcmp(now, s->hash, PC_HASH_LEN) == 0)
        pc_info(component, "SIGHUP: %s %s unchanged", what, s->path);
    else
        pc_warn(component,
                "SIGHUP: %s %s changed since start and is NOT reloaded: nng cannot change a TLS "
                "configuration in use; restart this daemon to use it (a rolling restart for a "
                "cluster: docs/operations.md)",
                what, s->path);
}

int pc_tls_server_config(const char *cert_key_file, nng_tls_config **out, pc_err *err)
{
    *out = NULL;
    nng_tls_config *cfg = NULL;
    int rv = nng_tls_config_alloc(&cfg, NNG_TLS_MODE_SERVER);
    if (rv == 0)
        rv = nng_tls_config_cert_key_file(cfg, cert_key_file, NULL);
    if (rv != 0) {
        if (cfg != NULL)
            nng_tls_config_free(cfg);
        return pc_err_set(err, PC_E_INVALID, "TLS certificate and key from %s: %s", cert_key_file,
                          nng_strerror(rv));
    }
    *out = cfg;
    return PC_OK;
}

int pc_tls_client_config(const char *ca_file, const char *server_name, nng_tls_config **out,
                         pc_err *err)
{
    *out = NULL;
    nng_tls_config *cfg = NULL;
    int rv = nng_tls_config_alloc(&cfg, NNG_TLS_MODE_CLIENT);
    if (rv == 0)
        rv = nng_tls_config_ca_file(cfg, ca_file);
    if (rv == 0)
        rv = nng_tls_config_auth_mode(cfg, NNG_TLS_AUTH_MODE_REQUIRED);
    if (rv == 0 && server_name != NULL)
        rv = nng_tls_config_server_name(cfg, server_name);
    if (rv != 0) {
        if (cfg != NULL)
            nng_tls_config_free(cfg);
        return pc_err_set(err, PC_E_INVALID, "TLS CA from %s: %s", ca_file, nng_strerror(rv));
    }
    *out = cfg;
    return PC_OK;
}

bool pc_url_is_tls(const char *url)
{
    return strncmp(url, "tls+tcp://", 10) == 0 || strncmp(url, "https://", 8) == 0 ||
           strncmp(url, "tls+tcp4://", 11) == 0 || strncmp(url, "tls+tcp6://", 11) == 0;
}

int pc_tls_check_url(const char *url, const nng_tls_config *cfg, bool allow_plaintext,
                     const char *what, pc_err *err)
{
    if (pc_url_is_tls(url)) {
        if (cfg == NULL)
            return pc_err_set(err, PC_E_INVALID, "%s %s is TLS but no TLS files are configured",
                              what, url);
        return PC_OK;
    }
    if (!allow_plaintext)
        return pc_err_set(err, PC_E_INVALID,
                          "%s %s is plaintext: use tls+tcp:// or https:// (or set "
                          "allow_plaintext for local development)",
                          what, url);
    return PC_OK;
}

int pc_nng_listen(nng_socket s, const char *url, nng_tls_config *cfg, pc_err *err)
{
    return pc_nng_listen_bound(s, url, cfg, NULL, 0, err);
}

int pc_nng_listen_bound(nng_socket s, const char *url, nng_tls_config *cfg, char *bound, size_t cap,
                        pc_err *err)
{
    nng_listener l;
    int rv = nng_listener_create(&l, s, url);
    if (rv == 0 && pc_url_is_tls(url) && cfg != NULL)
        rv = nng_listener_set_ptr(l, NNG_OPT_TLS_CONFIG, cfg);
    if (rv == 0)
        rv = nng_listener_start(l, 0);
    if (rv != 0)
        return pc_err_set(err, PC_E_UNAVAILABLE, "cannot listen on %s: %s", url, nng_strerror(rv));
    if (bound == NULL)
        return PC_OK;
    int port = 0;
    rv = nng_listener_get_int(l, NNG_OPT_TCP_BOUND_PORT, &port);
    if (rv == NNG_ENOTSUP) { /* not TCP (ipc://...): no port to choose */
        if ((size_t)snprintf(bound, cap, "%s", url) < cap)
            return PC_OK;
        nng_listener_close(l);
        return pc_err_set(err, PC_E_INVALID, "address %s is too long", url);
    }
    if (rv != 0) {
        nng_listener_close(l);
        return pc_err_set(err, PC_E_UNAVAILABLE, "cannot read the port bound for %s: %s", url,
                          nng_strerror(rv));
    }
    if (pc_url_with_port(url, port, bound, cap, err) != PC_OK) {
        nng_listener_close(l);
        return PC_E_INVALID;
    }
    return PC_OK;
}

int pc_url_with_port(const char *url, int port, char *out, size_t cap, pc_err *err)
{
    nng_url *u = NULL;
    int rv = nng_url_parse(&u, url);
    if (rv != 0)
        return pc_err_set(err, PC_E_INVALID, "bad address %s: %s", url, nng_strerror(rv));
    /* nng gives an IPv6 host without its brackets. */
    bool v6 = strchr(u->u_hostname, ':') != NULL;
    int n = snprintf(out, cap, "%s://%s%s%s:%d%s", u->u_scheme, v6 ? "[" : "", u->u_hostname,
                     v6 ? "]" : "", port, u->u_path);
    nng_url_free(u);
    if (n < 0 || (size_t)n >= cap)
        return pc_err_set(err, PC_E_INVALID, "address %s is too long", url);
    return PC_OK;
}

int pc_nng_dial(nng_socket s, const char *url, nng_tls_config *cfg, int flags, pc_err *err)
{
    nng_dialer d;
    int rv = nng_dialer_create(&d, s, url);
    if (rv == 0 && pc_url_is_tls(url) && cfg != NULL)
        rv = nng_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, cfg);
    if (rv == 0)
        rv = nng_dialer_start(d, flags);
    if (rv != 0)
        return pc_err_set(err, PC_E_UNAVAILABLE, "cannot dial %s: %s", url, nng_strerror(rv));
    return PC_OK;
}
