/* etcd_cluster.c - etcd as a benchmark baseline (see etcd_cluster.h). */
#include "etcd_cluster.h"

#include <setjmp.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "clock.h"
#include "http_client.h"

const char *etcd_bin(void)
{
    const char *bin = getenv("ETCD_BIN");
    return bin != NULL ? bin : "/usr/bin/etcd";
}

bool etcd_installed(void)
{
    return access(etcd_bin(), X_OK) == 0;
}

static bool etcd_healthy(const char *url)
{
    pc_http_result r;
    pc_err err;
    if (pc_http_call(url, "GET", "/health", NULL, NULL, 0, 2000, &r, &err) != PC_OK)
        return false;
    bool ok = r.status == 200 && r.body != NULL && strstr((char *)r.body, "true") != NULL;
    pc_http_result_free(&r);
    return ok;
}

static bool listen_everywhere;

void etcd_listen_everywhere(bool on)
{
    listen_everywhere = on;
}

void etcd_start(etcd_cluster *e, int n, size_t max_request_bytes)
{
    assert_true(n >= 1 && n <= ETCD_MAX_MEMBERS);
    memset(e, 0, sizeof(*e));
    e->n = n;
    pc_test_tmpdir(e->dir, sizeof(e->dir), "etcd");
    int peer_port[ETCD_MAX_MEMBERS];
    char initial[512] = "";
    for (int i = 0; i < n; i++) {
        peer_port[i] = pc_test_free_port();
        snprintf(e->client_url[i], sizeof(e->client_url[i]), "http://127.0.0.1:%d",
                 pc_test_free_port());
        char member[96];
        snprintf(member, sizeof(member), "%se%d=http://127.0.0.1:%d", i ? "," : "", i,
                 peer_port[i]);
        strncat(initial, member, sizeof(initial) - strlen(initial) - 1);
    }
    char max_bytes[32];
    snprintf(max_bytes, sizeof(max_bytes), "%zu",
             max_request_bytes ? max_request_bytes : (size_t)1572864);
    for (int i = 0; i < n; i++) {
        char name[16], data[320], peer[64], log[340], listen[64];
        snprintf(listen, sizeof(listen), "%s", e->client_url[i]);
        if (listen_everywhere)
            snprintf(listen, sizeof(listen), "http://0.0.0.0:%s",
                     strrchr(e->client_url[i], ':') + 1);
        snprintf(name, sizeof(name), "e%d", i);
        snprintf(data, sizeof(data), "%s/%s", e->dir, name);
        snprintf(peer, sizeof(peer), "http://127.0.0.1:%d", peer_port[i]);
        snprintf(log, sizeof(log), "%s/%s.log", e->dir, name);
        char *argv[] = {(char *)etcd_bin(),
                        "--name",
                        name,
                        "--data-dir",
                        data,
                        "--listen-client-urls",
                        listen,
                        "--advertise-client-urls",
                        e->client_url[i],
                        "--listen-peer-urls",
                        peer,
                        "--initial-advertise-peer-urls",
                        peer,
                        "--initial-cluster",
                        initial,
                        "--initial-cluster-state",
                        "new",
                        "--max-request-bytes",
                        max_bytes,
                        "--log-level",
                        "error",
                        NULL};
        e->proc[i] = pc_proc_spawn(name, argv, log);
        assert_non_null(e->proc[i]);
    }
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (int i = 0; i < n; i++)
        while (!etcd_healthy(e->client_url[i])) {
            if (pc_test_now_ms() > deadline) {
                pc_proc_dump_log(e->proc[i]);
                fail_msg("etcd member %d did not become healthy", i);
            }
            pc_test_sleep_ms(50);
        }
}

void etcd_stop(etcd_cluster *e)
{
    for (int i = 0; i < e->n; i++) {
        pc_proc_stop(e->proc[i]);
        pc_proc_free(e->proc[i]);
    }
    pc_test_rm_rf(e->dir);
}

/* base64 (standard, padded) of len bytes; malloc'd. */
static char *b64(const void *data, size_t len)
{
    size_t cap = sodium_base64_encoded_len(len, sodium_base64_VARIANT_ORIGINAL);
    char *out = malloc(cap);
    assert_non_null(out);
    sodium_bin2base64(out, cap, data, len, sodium_base64_VARIANT_ORIGINAL);
    return out;
}

/* etcd's put body for key and value (JSON, both base64). */
static char *put_body(const char *key, const void *value, size_t len, size_t *n)
{
    char *k = b64(key, strlen(key)), *v = b64(value, len);
    size_t cap = strlen(k) + strlen(v) + 64;
    char *body = malloc(cap);
    assert_non_null(body);
    *n = (size_t)snprintf(body, cap, "{\"key\":\"%s\",\"value\":\"%s\"}", k, v);
    free(k);
    free(v);
    return body;
}

bool etcd_put_kept(pc_http_session *s, const char *key, const void *value, size_t len)
{
    size_t n = 0;
    char *body = put_body(key, value, len, &n);
    pc_http_result res;
    pc_err err;
    int rc = pc_http_session_call(s, "POST", "/v3/kv/put", NULL, body, n, 60000, &res, &err);
    bool ok = rc == PC_OK && res.status == 200;
    if (rc == PC_OK)
        pc_http_result_free(&res);
    free(body);
    return ok;
}

bool etcd_put(etcd_cluster *e, int member, const char *key, const void *value, size_t len)
{
    size_t n = 0;
    char *body = put_body(key, value, len, &n);
    pc_http_result res;
    pc_err err;
    int rc = pc_http_call(e->client_url[member % e->n], "POST", "/v3/kv/put", NULL, body, n, 60000,
                          &res, &err);
    bool ok = rc == PC_OK && res.status == 200;
    if (rc == PC_OK)
        pc_http_result_free(&res);
    free(body);
    return ok;
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

void etcd_watchers_start(etcd_watchers *w, etcd_cluster *e, const char *key, int n)
{
    etcd_watchers_start_placed(w, e, key, n, NULL, NULL);
}

void etcd_watchers_start_placed(etcd_watchers *w, etcd_cluster *e, const char *key, int n,
                                const char *const *netns, const char *const *host)
{
    memset(w, 0, sizeof(*w));
    w->n = n;
    w->proc = calloc((size_t)n, sizeof(*w->proc));
    w->file = calloc((size_t)n, sizeof(*w->file));
    w->seen = calloc((size_t)n, sizeof(*w->seen));
    assert_true(w->proc != NULL && w->file != NULL && w->seen != NULL);
    char *k = b64(key, strlen(key));
    char body[256], url[128];
    snprintf(body, sizeof(body), "{\"create_request\":{\"key\":\"%s\"}}", k);
    free(k);
    const char *port = strrchr(e->client_url[0], ':') + 1;
    for (int i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof(name), "watch-%d", i);
        snprintf(w->file[i], sizeof(w->file[i]), "%s/%s.out", e->dir, name);
        snprintf(url, sizeof(url), "http://%s:%s/v3/watch",
                 host != NULL && host[i] != NULL ? host[i] : "127.0.0.1", port);
        char *argv[] = {"/usr/bin/curl", "-sN", "-X", "POST", url, "-d", body, NULL};
        pc_test_place(netns != NULL ? netns[i] : NULL, NULL);
        w->proc[i] = pc_proc_spawn(name, argv, w->file[i]);
        pc_test_place(NULL, NULL);
        assert_non_null(w->proc[i]);
    }
    /* Each prints its "created" answer once its watch is in place. */
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (int i = 0; i < n; i++)
        while (file_size(w->file[i]) == 0) {
            if (pc_test_now_ms() > deadline)
                fail_msg("etcd watcher %d did not start", i);
            pc_test_sleep_ms(5);
        }
}

void etcd_watchers_mark(etcd_watchers *w)
{
    for (int i = 0; i < w->n; i++)
        w->seen[i] = file_size(w->file[i]);
}

double etcd_watchers_wait(etcd_watchers *w, size_t min_bytes, double since_ms, int timeout_ms)
{
    double deadline = since_ms + timeout_ms, last = since_ms;
    for (int i = 0; i < w->n; i++) {
        while (file_size(w->file[i]) < w->seen[i] + (long)min_bytes) {
            if (pc_mono_ms_frac() > deadline)
                return -1;
            usleep(200);
        }
        double now = pc_mono_ms_frac();
        if (now > last)
            last = now;
    }
    return last - since_ms;
}

void etcd_watchers_stop(etcd_watchers *w)
{
    for (int i = 0; i < w->n; i++) {
        pc_proc_kill9(w->proc[i]);
        pc_proc_free(w->proc[i]);
    }
    free(w->proc);
    free(w->file);
    free(w->seen);
}
