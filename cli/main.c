/* main.c - the popcast command: key generation and the controller's API
 * from a shell. `popcast --help` lists the commands, `popcast COMMAND
 * --help` shows one; docs/cli.md has more.
 *
 * Every command is a row of the command table (at the end): its
 * arguments, exactly the options it accepts, and its handler. The whole
 * command line is parsed against that row before the handler runs, so a
 * wrong command line (exit 2) sends nothing to a controller.
 *
 * Exit status: see RC_*. For RC_USAGE, every argument and option (and the
 * connection settings from the environment) is checked, and the token
 * file read, before the first request. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bundle.h"
#include "clock.h"
#include "crypto.h"
#include "envelope.h"
#include "http_client.h"
#include "sse.h"
#include "names.h"
#include "target.h"
#include "tls.h"

#ifndef POPCAST_VERSION
#define POPCAST_VERSION "unknown"
#endif

#define DEFAULT_CONTROLLER "http://127.0.0.1:7070"
#define DEFAULT_MAX_BUNDLE (64u * 1024 * 1024)
#define TIMEOUT_MS         120000
#define WAIT_DEFAULT_S     60
#define WAIT_STEP_MS       1000
#define QUIET_LINE_MS      5000 /* --wait: a line at least this often, even if nothing moved */
#define MAX_ARGS           3    /* positional arguments of any command */
#define MAX_TENANTS        16   /* token create --tenant */

/* Exit status (docs/cli.md). */
enum {
    RC_OK = 0,
    RC_FAILED = 1,      /* the request failed: an HTTP error, the controller unreachable */
    RC_USAGE = 2,       /* the command line is wrong; nothing was sent */
    RC_NACKED = 3,      /* --wait: an agent refused (nacked) the version */
    RC_TIMEOUT = 4,     /* --wait: not live on the wanted agents within --timeout */
    RC_NO_AGENTS = 5,   /* --wait: no agent reports to the controller, so nothing to wait for */
    RC_UNREACHABLE = 6, /* --wait: too many agents got something newer first: it never will be */
    RC_UNKNOWN = 7,     /* a write was sent and no answer came: it may or may not be done */
    RC_UNHEALTHY = 8,   /* health: the version failed the gate */
    RC_TOO_FEW = 9,     /* health: too few requests yet to judge */
};

#define MAX_CONTROLLERS 8
/* How long a request keeps trying the controllers (refused connections,
 * 503 during an election, 429 over the rate) before it gives up, by
 * default (--retry-for). */
#define RETRY_FOR_DEFAULT_S 20
#define RETRY_MIN_MS        200
#define RETRY_MAX_MS        2000

/* Every option of every command. The connection options come first:
 * every command accepts them (see accepts()). */
enum opt_id {
    O_NONE,
    O_CONTROLLER,
    O_TOKEN,
    O_TOKEN_FILE,
    O_CA_FILE,
    O_TLS_SERVER_NAME,
    O_RETRY_FOR,
    O_LAST_CONNECTION = O_RETRY_FOR,
    O_JSON,
    O_WAIT,
    O_TIMEOUT,
    O_FRACTION,
    O_ENTRYPOINT,
    O_RUNTIME,
    O_OUT,
    O_KEY_NAME,
    O_TENANT,
    O_TOKEN_NAME,
    O_ROOT_KEY,
    O_AUTHORIZATION,
    O_REPLACES,
    O_IDEMPOTENCY_KEY,
    O_MESSAGE,
    O_BASELINE,
    O_MIN_REQUESTS,
    O_POP,
    O_AGENT,
    O_PERMILLE,
    O_EVERYONE,
    O_STAGED,
    O_PLAN,
    O_IMMEDIATE,
    O_NO_DEPLOYMENT,
    O_SPLIT,
    O_SPLIT_KEY,
    O_FROM,
    O_EVENTS,
    O_COUNT
};

typedef struct command command;

typedef struct cli {
    const command *cmd;
    const char *controller; /* the one in use: the leader once known */
    char controller_buf[512];
    const char *controllers[MAX_CONTROLLERS]; /* --controller, in order */
    int n_controllers;
    int current;                /* index of the one in use */
    char env_controllers[1024]; /* POPCAST_CONTROLLER's list, split */
    long long retry_for_s;      /* --retry-for */
    bool outcome_unknown;       /* a write went out and no answer came */
    /* Deploy, rollback, delete: the Idempotency-Key every try of the
     * write carries (--idempotency-key, or a random one per run). */
    char idempotency_key[PC_IDEMPOTENCY_KEY_MAX + 1];
    const char *token;
    const char *token_file;
    char token_buf[256];
    bool json;
    bool wait;
    long long timeout_s;              /* --wait gives up after this */
    double fraction;                  /* --wait: live on this fraction of the agents is enough */
    const char *ca_file;              /* https: the CA to trust */
    const char *tls_server_name;      /* https: the name the certificate must carry */
    const char *root_key;             /* key rotate: sign with this root key (emergency) */
    const char *authorization;        /* key rotate: a root's offline authorization file */
    const char *replaces;             /* key authorize: the key id being replaced */
    const char *tenants[MAX_TENANTS]; /* token create --tenant, repeatable */
    int n_tenants;
    /* deploy, stage: where the version goes live (--pop, --agent
     * repeatable; --permille -1 when not given). */
    const char *pops[PC_TARGET_MAX_NAMES], *agents[PC_TARGET_MAX_NAMES];
    int n_pops, n_agents;
    long long permille;
    bool everyone;
    bool staged, immediate; /* deploy: the default plan spelled out / one stage */
    bool direct;            /* deploy --direct: one entry, no deployment */
    const char *plan_file;
    long long split;            /* stage --split: per mille of each agent's requests */
    const char *split_key;      /* stage --split-key */
    bool quiet_upload;          /* deploy: the upload says only what it made */
    long long uploaded_version; /* what deploy_or_upload made */
    bool upload_replayed;       /* ... and whether a key named it made before */
    const char *entrypoint;
    const char *message;              /* --message */
    long long baseline, min_requests; /* health: 0 when not given */
    long long from, events;           /* watch: --from, --count (0: not given) */
    const char *runtime;
    const char *out_dir;
    const char *name;
    const char *args[MAX_ARGS];
    int nargs;
    int given[O_COUNT]; /* how often each option was given */
} cli;

__attribute__((format(printf, 1, 2))) static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "popcast: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return 1;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* The next controller of the list (after a failure of the current one). */
static void next_controller(cli *c)
{
    if (c->n_controllers > 1) {
        c->current = (c->current + 1) % c->n_controllers;
        c->controller = c->controllers[c->current];
    }
}

/* Calls the API; prints the error and returns NULL unless 2xx.
 *
 * Retries (docs/cli.md "Several controllers, retries"), for up to
 * --retry-for seconds with a doubling pause: on to the next controller when one
 * cannot be connected to, or answers 503 (an election, a start, a stop);
 * the same one again after 429, as its Retry-After says. Each of those
 * means the request was not acted on, so a write is sent again safely.
 * A write that was sent and got no answer is sent again only when it
 * carries an idempotency key (the controller answers a retry from the
 * change the key made, never a second one); without one it may have been
 * done (c->outcome_unknown, exit 7). A read is retried anyway. A
 * follower's 307 is followed to the leader. */
static json_t *call(cli *c, const char *method, const char *path, const char *content_type,
                    const void *body, size_t len)
{
    const char *tok = c->token;
    char auth[300];
    const char *headers[9];
    int h = 0;
    bool keyed = c->idempotency_key[0] != '\0' && strcmp(method, "GET") != 0;
    if (keyed) {
        headers[h++] = "Idempotency-Key";
        headers[h++] = c->idempotency_key;
    }
    if (tok != NULL) {
        snprintf(auth, sizeof(auth), "Bearer %s", tok);
        headers[h++] = "Authorization";
        headers[h++] = auth;
    }
    if (content_type != NULL) {
        headers[h++] = "Content-Type";
        headers[h++] = content_type;
    }
    headers[h] = NULL;
    bool read = strcmp(method, "GET") == 0;
    pc_http_result r;
    pc_err err;
    json_error_t jerr;
    json_t *doc = NULL;
    int64_t give_up = pc_mono_ms() + c->retry_for_s * 1000;
    int64_t pause = RETRY_MIN_MS;
    int hops = 0, tried = 0;
    for (;;) {
        char base[512];
        snprintf(base, sizeof(base), "%s", c->controller);
        if (pc_http_call(base, method, path, headers, body, len, TIMEOUT_MS, &r, &err) != PC_OK) {
            bool may_retry = pc_mono_ms() + pause <= give_up;
            if (r.sent && keyed && may_retry) {
                fprintf(stderr,
                        "popcast: %s\npopcast: the request was sent and no answer came; sending it "
                        "again with the same idempotency key (%s)\n",
                        err.msg, c->idempotency_key);
            } else if (r.sent && keyed) {
                c->outcome_unknown = true;
                fprintf(stderr,
                        "popcast: %s\npopcast: the request was sent and no answer came: it may or "
                        "may not have been done; run the same command with --idempotency-key %s "
                        "to find out (it is not done twice)\n",
                        err.msg, c->idempotency_key);
                return NULL;
            } else if (r.sent && !read) {
                c->outcome_unknown = true;
                fprintf(stderr,
                        "popcast: %s\npopcast: the request was sent and no answer came: it may or "
                        "may not have been done; look before trying again (popcast status, "
                        "popcast versions)\n",
                        err.msg);
                return NULL;
            }
            tried++;
            if (pc_mono_ms() + pause > give_up) {
                fprintf(stderr, "popcast: %s\n", err.msg);
                return NULL;
            }
            if (!(r.sent && keyed)) /* else said above */
                fprintf(stderr, "popcast: %s%s\n", err.msg,
                        c->n_controllers > 1 ? "; trying the next controller" : "; trying again");
            next_controller(c);
            if (tried % (c->n_controllers > 0 ? c->n_controllers : 1) == 0) {
                sleep_ms(pause);
                pause = pause * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : pause * 2;
            }
            continue;
        }
        doc = json_loadb((const char *)r.body, r.body_len, 0, &jerr);
        const char *leader =
            json_string_value(json_object_get(json_object_get(doc, "error"), "leader"));
        const char *code =
            json_string_value(json_object_get(json_object_get(doc, "error"), "code"));
        bool unknown = r.status == 503 && code != NULL && strcmp(code, "outcome_unknown") == 0;
        if (unknown && !read && !(keyed && pc_mono_ms() + pause <= give_up)) {
            /* Leadership was lost, or the leader stopped, with the write
             * in flight: it may have been committed. */
            const char *msg =
                json_string_value(json_object_get(json_object_get(doc, "error"), "message"));
            c->outcome_unknown = true;
            if (keyed)
                fprintf(stderr,
                        "popcast: %s answered 503: %s\npopcast: run the same command with "
                        "--idempotency-key %s to find out (it is not done twice)\n",
                        base, msg ? msg : "outcome unknown", c->idempotency_key);
            else
                fprintf(stderr,
                        "popcast: %s answered 503: %s\npopcast: it may or may not have been "
                        "done; look before trying again\n",
                        base, msg ? msg : "outcome unknown");
            json_decref(doc);
            pc_http_result_free(&r);
            return NULL;
        }
        if (r.status == 307 && leader != NULL && hops < 3) {
            /* A follower answers writes with the leader's address. Later
             * calls (--wait's rollout queries) go to the leader too: a
             * follower may not have applied the change yet. */
            hops++;
            if (!c->json)
                fprintf(stderr, "popcast: %s is a follower; sending to the leader %s\n", base,
                        leader);
            snprintf(c->controller_buf, sizeof(c->controller_buf), "%s", leader);
            c->controller = c->controller_buf;
        } else if ((r.status == 503 || r.status == 429) && pc_mono_ms() + pause <= give_up) {
            /* Not acted on: an election, a start or a stop (503), or
             * over the write rate (429); or acted on perhaps, for a keyed
             * write (outcome_unknown): its retry is answered from it. */
            int64_t wait = pause;
            const char *after = pc_http_result_header(&r, "Retry-After");
            if (r.status == 429 && after != NULL && atoll(after) > 0)
                wait = atoll(after) * 1000 > RETRY_MAX_MS ? RETRY_MAX_MS : atoll(after) * 1000;
            fprintf(stderr, "popcast: %s answered %d; trying %s in %lld ms\n", base, r.status,
                    r.status == 503 && c->n_controllers > 1 ? "the next controller" : "again",
                    (long long)wait);
            if (r.status == 503)
                next_controller(c);
            sleep_ms(wait);
            pause = pause * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : pause * 2;
        } else {
            break;
        }
        json_decref(doc);
        doc = NULL;
        pc_http_result_free(&r);
    }
    if (r.status < 200 || r.status > 299) {
        json_t *e = doc ? json_object_get(doc, "error") : NULL;
        const char *msg = e ? json_string_value(json_object_get(e, "message")) : NULL;
        fprintf(stderr, "popcast: %s %s: HTTP %d: %s\n", method, path, r.status,
                msg ? msg : (const char *)r.body);
        json_decref(doc);
        doc = NULL;
    } else if (doc == NULL) {
        fprintf(stderr, "popcast: the controller's answer is not JSON: %s\n", jerr.text);
    }
    pc_http_result_free(&r);
    return doc;
}

/* POSTs body (taken over, may be NULL on allocation failure) as JSON;
 * returns the answer, or NULL after reporting why. */
static json_t *post_json(cli *c, const char *path, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (text == NULL) {
        fail("%s", "out of memory");
        return NULL;
    }
    json_t *doc = call(c, "POST", path, "application/json", text, strlen(text));
    free(text);
    return doc;
}

static void print_json(json_t *doc)
{
    char *s = json_dumps(doc, JSON_INDENT(2));
    if (s != NULL)
        printf("%s\n", s);
    free(s);
}

static const char *str(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "-";
}

static long long num(json_t *o, const char *key)
{
    return (long long)json_integer_value(json_object_get(o, key));
}

static int wait_live(cli *c, const char *tenant, long long version);
static bool is_version_arg(const char *v);

static void format_time(long long unix_ms, char *out, size_t cap)
{
    time_t t = (time_t)(unix_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int cmd_keygen(cli *c)
{
    const char *dir = c->out_dir ? c->out_dir : ".";
    const char *name = c->name ? c->name : "popcast-signing";
    char sk_path[4096], pk_path[4096];
    snprintf(sk_path, sizeof(sk_path), "%s/%s.key", dir, name);
    snprintf(pk_path, sizeof(pk_path), "%s/%s.pub", dir, name);
    pc_signing_key key;
    pc_err err;
    if (pc_keygen(&key) != PC_OK)
        return fail("%s", "key generation failed");
    int rc = pc_key_write_secret(sk_path, &key, &err);
    if (rc == PC_OK && (rc = pc_key_write_public(pk_path, &key.pub, &err)) != PC_OK)
        remove(sk_path);
    char kid[PC_HEX_KEY_ID_LEN];
    pc_hex(kid, key.pub.id, PC_KEY_ID_LEN);
    pc_signing_key_wipe(&key);
    if (rc != PC_OK)
        return fail("%s", err.msg);
    if (c->json) {
        json_t *o =
            json_pack("{s:s,s:s,s:s}", "secret_key", sk_path, "public_key", pk_path, "key_id", kid);
        print_json(o);
        json_decref(o);
    } else {
        printf("secret key %s (mode 0600: give it to controllers only)\n", sk_path);
        printf("public key %s (give it to agents: --trusted-key)\n", pk_path);
        printf("key id     %s\n", kid);
    }
    return 0;
}

static int read_file(const char *path, uint8_t **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -1;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || st.st_size > (off_t)DEFAULT_MAX_BUNDLE) {
        fclose(f);
        errno = EFBIG;
        return -1;
    }
    *out = malloc((size_t)st.st_size + 1);
    *len = *out ? fread(*out, 1, (size_t)st.st_size, f) : 0;
    fclose(f);
    return *out ? 0 : -1;
}

/* Deploy, rollback, delete: every try of the write carries this key. */
/* "&message=" and --message percent-encoded (RFC 3986 unreserved bytes
 * as they are), appended to url; nothing without --message. */
static void add_message_query(const cli *c, char *url, size_t cap)
{
    if (c->message == NULL || c->message[0] == '\0')
        return;
    size_t n = strlen(url);
    n += (size_t)snprintf(url + n, cap > n ? cap - n : 0,
                          "%cmessage=", strchr(url, '?') ? '&' : '?');
    for (const unsigned char *m = (const unsigned char *)c->message; *m != '\0' && n + 4 < cap;
         m++) {
        if (isalnum(*m) || strchr("-._~", *m) != NULL)
            url[n++] = (char)*m;
        else
            n += (size_t)snprintf(url + n, cap - n, "%%%02X", *m);
    }
    url[n < cap ? n : cap - 1] = '\0';
}

static void use_idempotency_key(cli *c)
{
    if (c->idempotency_key[0] != '\0')
        return; /* --idempotency-key */
    uint8_t raw[16];
    randombytes_buf(raw, sizeof(raw));
    pc_hex(c->idempotency_key, raw, sizeof(raw));
}

/* Appends a deploy's target to its query: hold (an upload), or the
 * --pop, --agent and --permille given (none: every agent). */
static void add_target_query(cli *c, char *url, size_t cap, bool hold)
{
    size_t n = strlen(url);
    if (hold) {
        snprintf(url + n, cap - n, "&hold=true");
        return;
    }
    const char *sep = "&target_pops=";
    for (int i = 0; i < c->n_pops; i++, sep = ",")
        n += (size_t)snprintf(url + n, n < cap ? cap - n : 0, "%s%s", sep, c->pops[i]);
    sep = "&target_agents=";
    for (int i = 0; i < c->n_agents; i++, sep = ",")
        n += (size_t)snprintf(url + n, n < cap ? cap - n : 0, "%s%s", sep, c->agents[i]);
    if (c->given[O_PERMILLE])
        snprintf(url + n, n < cap ? cap - n : 0, "&target_permille=%lld", c->permille);
}

static int deploy_or_upload(cli *c, bool hold)
{
    const char *tenant = c->args[0], *path = c->args[1];
    struct stat st;
    if (stat(path, &st) != 0)
        return fail("cannot read %s", path);
    uint8_t *archive = NULL;
    size_t archive_len = 0;
    pc_err err;
    if (S_ISDIR(st.st_mode)) {
        if (pc_bundle_pack_dir(path, c->entrypoint, DEFAULT_MAX_BUNDLE, &archive, &archive_len,
                               &err) != PC_OK)
            return fail("%s", err.msg);
    } else {
        uint8_t *content = NULL;
        size_t len = 0;
        if (read_file(path, &content, &len) != 0)
            return fail("cannot read %s", path);
        char *copy = strdup(path);
        const char *name = c->entrypoint ? c->entrypoint : basename(copy);
        int rc = pc_bundle_pack_single(name, content, len, &archive, &archive_len, &err);
        free(copy);
        free(content);
        if (rc != PC_OK)
            return fail("%s", err.msg);
    }
    /* Room for a 512-byte message, each byte escaped, and a target of 2 x
     * 64 names. */
    static char url[2048 + 2 * PC_TARGET_MAX_NAMES * (PC_ID_MAX + 1) + 64];
    snprintf(url, sizeof(url), "/v1/tenants/%s/bundles?runtime=%s", tenant,
             c->runtime ? c->runtime : "lua");
    add_message_query(c, url, sizeof(url));
    add_target_query(c, url, sizeof(url), hold);
    use_idempotency_key(c);
    json_t *doc = call(c, "POST", url, "application/vnd.popcast.bundle", archive, archive_len);
    free(archive);
    if (doc == NULL)
        return 1;
    bool targeted = hold || c->n_pops > 0 || c->n_agents > 0 || c->given[O_PERMILLE];
    c->uploaded_version = num(doc, "version");
    c->upload_replayed = json_is_true(json_object_get(doc, "replayed"));
    /* With --wait, --json prints only the final rollout document. */
    if (c->quiet_upload) {
        if (!c->json)
            printf("uploaded %s version %lld (seq %lld, %lld bytes, hash %.16s...)%s\n", tenant,
                   num(doc, "version"), num(doc, "seq"), num(doc, "size"), str(doc, "hash"),
                   c->upload_replayed ? ", made before with this idempotency key" : "");
    } else if (c->json && !c->wait)
        print_json(doc);
    else if (!c->json)
        printf("%s %s version %lld (seq %lld, %lld bytes, hash %.16s...)%s\n",
               hold ? "uploaded" : "deployed", tenant, num(doc, "version"), num(doc, "seq"),
               num(doc, "size"), str(doc, "hash"),
               hold       ? ": live nowhere yet; `popcast stage` makes it live"
               : targeted ? ": live where its target names; `popcast stage` widens it"
                          : "");
    long long version = num(doc, "version");
    json_decref(doc);
    return c->wait ? wait_live(c, tenant, version) : 0;
}

/* Deployments (docs/deployments.md). */

/* An event's detail, "" when it has none. */
static const char *event_detail(json_t *e)
{
    const char *s = json_string_value(json_object_get(e, "detail"));
    return s ? s : "";
}

/* Prints one event line: "[stage 2] passed: detail". */
static void print_event(json_t *e)
{
    char when[32];
    format_time(num(e, "at_unix_ms"), when, sizeof(when));
    const char *detail = event_detail(e);
    printf("%s [stage %lld] %s%s%s", when, num(e, "stage"), str(e, "what"), detail[0] ? ": " : "",
           detail);
    if (num(e, "seq") != 0)
        printf(" (seq %lld)", num(e, "seq"));
    printf("\n");
}

static void print_deployment(json_t *d)
{
    printf("deployment %lld of %s version %lld: %s, stage %lld of %lld (baseline %lld%s)\n",
           num(d, "id"), str(d, "tenant"), num(d, "version"), str(d, "state"), num(d, "stage"),
           num(d, "stages_total"), num(d, "baseline"),
           json_is_true(json_object_get(d, "immediate")) ? ", immediate" : "");
    size_t i;
    json_t *st;
    json_array_foreach(json_object_get(d, "plan"), i, st)
    {
        char *target = json_dumps(json_object_get(st, "target"), JSON_COMPACT);
        printf("  stage %zu: %s, bake %lld ms, max nacks %lld, %s%s\n", i + 1,
               target ? target : "?", num(st, "bake_ms"), num(st, "max_nacks"),
               json_is_true(json_object_get(st, "gate")) ? "gated" : "no gate",
               json_is_true(json_object_get(st, "gate")) && num(st, "min_requests") > 0
                   ? " (needs its requests)"
                   : "");
        free(target);
    }
    json_t *e;
    json_array_foreach(json_object_get(d, "events"), i, e) print_event(e);
}

static bool deployment_over(const char *state)
{
    return strcmp(state, "running") != 0 && strcmp(state, "paused") != 0 &&
           strcmp(state, "halted") != 0;
}

/* Follows a deployment until it is over, printing each event as it is
 * recorded: 0 complete, 8 reverted, halted or aborted, 6 superseded, 4
 * past --timeout (default an hour). */
static int watch_deployment(cli *c, const char *tenant, long long id)
{
    long long timeout_s = c->given[O_TIMEOUT] ? c->timeout_s : 3600;
    int64_t deadline = pc_mono_ms() + timeout_s * 1000;
    size_t printed = 0;
    char url[256];
    snprintf(url, sizeof(url), "/v1/tenants/%s/deployments/%lld", tenant, id);
    for (;;) {
        json_t *d = call(c, "GET", url, NULL, NULL, 0);
        if (d == NULL)
            return RC_FAILED;
        json_t *events = json_object_get(d, "events");
        for (; !c->json && printed < json_array_size(events); printed++)
            print_event(json_array_get(events, printed));
        const char *state = str(d, "state");
        bool over =
            deployment_over(state) || (strcmp(state, "halted") == 0 && num(d, "baseline") == 0);
        if (over || pc_mono_ms() >= deadline) {
            int rc = !over                              ? RC_TIMEOUT
                     : strcmp(state, "complete") == 0   ? RC_OK
                     : strcmp(state, "superseded") == 0 ? RC_UNREACHABLE
                                                        : RC_UNHEALTHY;
            if (c->json)
                print_json(d);
            else
                printf("deployment %lld of %s version %lld: %s\n", id, tenant, num(d, "version"),
                       over ? state : "still going (timeout)");
            json_decref(d);
            return rc;
        }
        json_decref(d);
        sleep_ms(500);
    }
}

/* Starts a deployment of tenant's version (0: the active one) with the
 * default plan, --plan FILE or --immediate. */
static int start_deployment(cli *c, const char *tenant, long long version)
{
    json_t *req = json_object();
    if (version > 0)
        json_object_set_new(req, "version", json_integer(version));
    if (c->immediate) {
        json_object_set_new(req, "immediate", json_true());
    } else if (c->plan_file != NULL) {
        json_error_t jerr;
        json_t *plan = json_load_file(c->plan_file, 0, &jerr);
        if (plan == NULL) {
            json_decref(req);
            return fail("%s:%d: %s", c->plan_file, jerr.line, jerr.text);
        }
        json_object_set_new(req, "plan", plan);
    }
    if (c->message != NULL && c->message[0] != '\0')
        json_object_set_new(req, "message", json_string(c->message));
    char url[256];
    snprintf(url, sizeof(url), "/v1/tenants/%s/deployments", tenant);
    /* A deployment takes no idempotency key: a repeat is refused (409)
     * while the first one is not over. */
    c->idempotency_key[0] = '\0';
    json_t *d = post_json(c, url, req);
    if (d == NULL)
        return 1;
    long long id = num(d, "id");
    if (c->json && !c->wait)
        print_json(d);
    else if (!c->json)
        printf("deployment %lld of %s version %lld started: %lld stage%s%s\n", id, tenant,
               num(d, "version"), num(d, "stages_total"), num(d, "stages_total") == 1 ? "" : "s",
               c->wait ? "" : " (follow it: popcast deployments watch)");
    json_decref(d);
    return c->wait ? watch_deployment(c, tenant, id) : 0;
}

/* The id of the newest deployment of tenant's version (0: none), or -1
 * when the controller could not be asked. */
static long long newest_deployment_of(cli *c, const char *tenant, long long version)
{
    char url[256];
    snprintf(url, sizeof(url), "/v1/tenants/%s/deployments", tenant);
    json_t *doc = call(c, "GET", url, NULL, NULL, 0);
    if (doc == NULL)
        return -1;
    long long id = 0;
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(doc, "deployments"), i, d)
    {
        if (num(d, "version") == version && num(d, "id") > id)
            id = num(d, "id");
    }
    json_decref(doc);
    return id;
}

static int cmd_deploy(cli *c)
{
    const char *tenant = c->args[0];
    /* A stored version goes out through a deployment: the default plan,
     * --plan FILE or --immediate. */
    if (c->nargs < 2)
        return start_deployment(c, tenant, 0); /* the active version */
    if (is_version_arg(c->args[1]))
        return start_deployment(c, tenant, strtoll(c->args[1], NULL, 10));
    if (c->direct)
        return deploy_or_upload(c, false);
    /* Upload (held: live nowhere), then deploy that version through a
     * deployment, so that every deploy is gated and recorded. */
    bool wait = c->wait;
    c->wait = false;
    c->quiet_upload = true;
    int rc = deploy_or_upload(c, true);
    c->wait = wait;
    if (rc != 0)
        return rc;
    /* The same command again with the same key (after an answer was lost)
     * follows the deployment the first run started, if it got that far,
     * rather than being refused as a second one. */
    if (c->upload_replayed) {
        long long id = newest_deployment_of(c, tenant, c->uploaded_version);
        if (id < 0)
            return RC_FAILED;
        if (id > 0) {
            if (!c->json)
                printf("deployment %lld of %s version %lld was started by the first run%s\n", id,
                       tenant, c->uploaded_version,
                       c->wait ? "" : " (follow it: popcast deployments watch)");
            return c->wait ? watch_deployment(c, tenant, id) : 0;
        }
    }
    return start_deployment(c, tenant, c->uploaded_version);
}

static long long deployment_arg(cli *c)
{
    return strtoll(c->args[1], NULL, 10);
}

static int cmd_deployments_start(cli *c)
{
    return start_deployment(c, c->args[0], c->nargs > 1 ? strtoll(c->args[1], NULL, 10) : 0);
}

static int cmd_deployments_list(cli *c)
{
    char url[256];
    snprintf(url, sizeof(url), "/v1/tenants/%s/deployments", c->args[0]);
    json_t *doc = call(c, "GET", url, NULL, NULL, 0);
    if (doc == NULL)
        return 1;
    if (c->json) {
        print_json(doc);
    } else {
        printf("%-6s %-8s %-11s %-9s %-9s %-20s %s\n", "ID", "VERSION", "STATE", "STAGE",
               "BASELINE", "STARTED", "LAST EVENT");
        size_t i;
        json_t *d;
        json_array_foreach(json_object_get(doc, "deployments"), i, d)
        {
            char when[32], stage[24];
            format_time(num(d, "created_unix_ms"), when, sizeof(when));
            snprintf(stage, sizeof(stage), "%lld/%lld", num(d, "stage"), num(d, "stages_total"));
            json_t *events = json_object_get(d, "events");
            json_t *last = json_array_get(events, json_array_size(events) - 1);
            printf("%-6lld %-8lld %-11s %-9s %-9lld %-20s %s%s%.80s\n", num(d, "id"),
                   num(d, "version"), str(d, "state"), stage, num(d, "baseline"), when,
                   str(last, "what"), event_detail(last)[0] ? ": " : "", event_detail(last));
        }
    }
    json_decref(doc);
    return 0;
}

static int cmd_deployments_show(cli *c)
{
    char url[256];
    snprintf(url, sizeof(url), "/v1/tenants/%s/deployments/%lld", c->args[0], deployment_arg(c));
    json_t *d = call(c, "GET", url, NULL, NULL, 0);
    if (d == NULL)
        return 1;
    if (c->json)
        print_json(d);
    else
        print_deployment(d);
    json_decref(d);
    return 0;
}

static int cmd_deployments_watch(cli *c)
{
    return watch_deployment(c, c->args[0], deployment_arg(c));
}

static int deployment_operation(cli *c, const char *op)
{
    char url[256];
    snprintf(url, sizeof(url), "/v1/tenants/%s/deployments/%lld/%s", c->args[0], deployment_arg(c),
             op);
    json_t *d = call(c, "POST", url, NULL, NULL, 0);
    if (d == NULL)
        return 1;
    if (c->json) {
        print_json(d);
    } else {
        json_t *events = json_object_get(d, "events");
        printf("deployment %lld of %s version %lld is %s at stage %lld of %lld\n", num(d, "id"),
               str(d, "tenant"), num(d, "version"), str(d, "state"), num(d, "stage"),
               num(d, "stages_total"));
        print_event(json_array_get(events, json_array_size(events) - 1));
    }
    json_decref(d);
    return 0;
}

/* A tenant's default plan (docs/deployments.md "Plan syntax"). */
static int print_plan(cli *c, json_t *doc)
{
    if (doc == NULL)
        return 1;
    if (c->json) {
        print_json(doc);
    } else {
        bool own = strcmp(str(doc, "source"), "tenant") == 0;
        char when[32] = "";
        if (own)
            format_time(num(doc, "updated_unix_ms"), when, sizeof(when));
        printf("%s deploys with %s%s%s%s\n", str(doc, "tenant"),
               own ? "its own plan, set by " : "the controllers' default plan",
               own ? str(doc, "author") : "", own ? " at " : "", when);
        size_t i;
        json_t *st;
        json_array_foreach(json_object_get(doc, "plan"), i, st)
        {
            char *target = json_dumps(json_object_get(st, "target"), JSON_COMPACT);
            printf("  stage %zu: %s, bake %lld ms, max nacks %lld, %s\n", i + 1,
                   target ? target : "?", num(st, "bake_ms"), num(st, "max_nacks"),
                   json_is_true(json_object_get(st, "gate")) ? "gated" : "no gate");
            free(target);
        }
    }
    json_decref(doc);
    return 0;
}

static int cmd_plan_show(cli *c)
{
    char url[256];
    snprintf(url, sizeof(url), "/v1/tenants/%s/plan", c->args[0]);
    return print_plan(c, call(c, "GET", url, NULL, NULL, 0));
}

static int cmd_plan_set(cli *c)
{
    json_error_t jerr;
    json_t *plan = json_load_file(c->args[1], 0, &jerr);
    if (plan == NULL)
        return fail("%s:%d: %s", c->args[1], jerr.line, jerr.text);
    json_t *body = json_pack("{s:o}", "plan", plan);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (text == NULL)
        return fail("out of memory");
    char url[256];
    snprintf(url, sizeof(url), "/v1/tenants/%s/plan", c->args[0]);
    json_t *doc = call(c, "PUT", url, "application/json", (const uint8_t *)text, strlen(text));
    free(text);
    return print_plan(c, doc);
}

static int cmd_plan_clear(cli *c)
{
    char url[256];
    snprintf(url, sizeof(url), "/v1/tenants/%s/plan", c->args[0]);
    return print_plan(c, call(c, "DELETE", url, NULL, NULL, 0));
}

static int cmd_deployments_pause(cli *c)
{
    return deployment_operation(c, "pause");
}

static int cmd_deployments_resume(cli *c)
{
    return deployment_operation(c, "resume");
}

static int cmd_deployments_abort(cli *c)
{
    return deployment_operation(c, "abort");
}

static int cmd_deployments_promote(cli *c)
{
    return deployment_operation(c, "promote");
}

static int cmd_upload(cli *c)
{
    return deploy_or_upload(c, true);
}

static int cmd_stage(cli *c)
{
    const char *tenant = c->args[0];
    long long version = strtoll(c->args[1], NULL, 10);
    char url[256];
    snprintf(url, sizeof(url), "/v1/tenants/%s/versions/%lld/stage", tenant, version);
    json_t *req = json_object();
    if (c->everyone) {
        json_object_set_new(req, "everyone", json_true());
    } else {
        json_t *pops = json_array(), *agents = json_array();
        for (int i = 0; i < c->n_pops; i++)
            json_array_append_new(pops, json_string(c->pops[i]));
        for (int i = 0; i < c->n_agents; i++)
            json_array_append_new(agents, json_string(c->agents[i]));
        json_object_set_new(req, "pops", pops);
        json_object_set_new(req, "agents", agents);
        if (c->given[O_PERMILLE])
            json_object_set_new(req, "permille", json_integer(c->permille));
    }
    if (c->given[O_SPLIT]) {
        json_object_set_new(req, "split_permille", json_integer(c->split));
        json_object_set_new(req, "split_key", json_string(c->split_key));
    }
    if (c->message != NULL && c->message[0] != '\0')
        json_object_set_new(req, "message", json_string(c->message));
    use_idempotency_key(c);
    json_t *doc = post_json(c, url, req);
    if (doc == NULL)
        return 1;
    if (c->json && !c->wait)
        print_json(doc);
    else if (!c->json)
        printf("staged %s version %lld (seq %lld): live %s\n", tenant, num(doc, "version"),
               num(doc, "seq"), c->everyone ? "on every agent" : "where the stage names");
    json_decref(doc);
    return c->wait ? wait_live(c, tenant, version) : 0;
}

static int cmd_versions(cli *c)
{
    const char *tenant = c->args[0];
    char url[256];
    snprintf(url, sizeof(url), "/v1/tenants/%s/versions", tenant);
    json_t *doc = call(c, "GET", url, NULL, NULL, 0);
    if (doc == NULL)
        return 1;
    if (c->json) {
        print_json(doc);
    } else {
        printf("%-8s %-8s %-9s %-20s %-10s %-16s %s\n", "VERSION", "SEQ", "KIND", "CREATED", "SIZE",
               "HASH", "NOTE");
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(doc, "versions"), i, v)
        {
            char when[32], note[48] = "";
            format_time(num(v, "created_unix_ms"), when, sizeof(when));
            if (num(v, "rollback_of") != 0)
                snprintf(note, sizeof(note), "content of v%lld", num(v, "rollback_of"));
            const char *message = json_string_value(json_object_get(v, "message"));
            const char *author = json_string_value(json_object_get(v, "author"));
            message = message ? message : "";
            author = author ? author : "";
            char said[PC_CHANGE_MESSAGE_MAX + PC_CHANGE_AUTHOR_MAX + 16] = "";
            if (author[0] != '\0' || message[0] != '\0')
                snprintf(said, sizeof(said), "%s%s%s%s", note[0] ? "; " : "", author,
                         author[0] && message[0] ? ": " : "", message);
            printf("%-8lld %-8lld %-9s %-20s %-10lld %-16.16s %s%s\n", num(v, "version"),
                   num(v, "seq"), str(v, "kind"), when, num(v, "size"), str(v, "hash"), note, said);
        }
    }
    json_decref(doc);
    return 0;
}

static int cmd_rollback(cli *c)
{
    const char *tenant = c->args[0];
    /* Without VERSION the controller chooses: the newest earlier version
     * the agents showed live everywhere and nacked nowhere. */
    long long version = c->nargs > 1 ? strtoll(c->args[1], NULL, 10) : 0;
    char url[256];
    snprintf(url, sizeof(url), "/v1/tenants/%s/rollback", tenant);
    json_t *req = version > 0 ? json_pack("{s:I}", "version", (json_int_t)version) : json_object();
    if (req != NULL && c->message != NULL && c->message[0] != '\0')
        json_object_set_new(req, "message", json_string(c->message));
    use_idempotency_key(c);
    json_t *doc = post_json(c, url, req);
    if (doc == NULL)
        return 1;
    if (c->json && !c->wait)
        print_json(doc);
    else if (!c->json)
        printf("rolled %s back to the content of version %lld as version %lld (seq %lld)%s\n",
               tenant, num(doc, "rollback_of"), num(doc, "version"), num(doc, "seq"),
               version > 0 ? "" : ": the last version proven live on every agent");
    long long new_version = num(doc, "version");
    json_decref(doc);
    return c->wait ? wait_live(c, tenant, new_version) : 0;
}

static int cmd_delete(cli *c)
{
    const char *tenant = c->args[0];
    char url[2048];
    snprintf(url, sizeof(url), "/v1/tenants/%s", tenant);
    add_message_query(c, url, sizeof(url));
    use_idempotency_key(c);
    json_t *doc = call(c, "DELETE", url, NULL, NULL, 0);
    if (doc == NULL)
        return 1;
    if (c->json && !c->wait)
        print_json(doc);
    else if (!c->json)
        printf("deleted %s at version %lld (seq %lld)\n", tenant, num(doc, "version"),
               num(doc, "seq"));
    long long version = num(doc, "version");
    json_decref(doc);
    return c->wait ? wait_live(c, tenant, version) : 0;
}

/* Prints each agent in state (e.g. "nacked", "missing") with its details. */
static void print_agents_in(json_t *doc, const char *state)
{
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(doc, "agents"), i, a)
    {
        if (strcmp(str(a, "state"), state) != 0)
            continue;
        printf("  %-20s pop %-10s %s", str(a, "agent_id"), str(a, "pop"), state);
        if (json_object_get(a, "reason") != NULL)
            printf(": %s: %s", str(a, "reason"), str(a, "detail"));
        else
            printf(" (applied v%lld, live v%lld%s)", num(a, "applied_version"),
                   num(a, "live_version"),
                   json_is_true(json_object_get(a, "stale")) ? ", stale" : "");
        printf("\n");
    }
}

/* The agents a wait is still waiting for, on one line: at most five,
 * each with what it last reported and when. */
static void print_not_yet(json_t *doc)
{
    size_t i, shown = 0, more = 0;
    json_t *a;
    json_array_foreach(json_object_get(doc, "agents"), i, a)
    {
        if (strcmp(str(a, "state"), "live") == 0)
            continue;
        if (shown == 5) {
            more++;
            continue;
        }
        printf("%s%s (pop %s, %s, applied v%lld, live v%lld%s, last report %.1f s ago)",
               shown ? ", " : "", str(a, "agent_id"), str(a, "pop"), str(a, "state"),
               num(a, "applied_version"), num(a, "live_version"),
               json_is_true(json_object_get(a, "stale")) ? ", stale" : "",
               (double)num(a, "last_seen_ms_ago") / 1000.0);
        shown++;
    }
    if (more > 0)
        printf(", +%zu more", more);
    printf("\n");
}

static void print_summary(json_t *doc)
{
    json_t *s = json_object_get(doc, "summary");
    printf("  live %lld/%lld  applied %lld  nacked %lld  missing %lld  stale %lld", num(s, "live"),
           num(s, "total"), num(s, "applied"), num(s, "nacked"), num(s, "missing"),
           num(s, "stale"));
    /* The states that only some rollouts have. */
    const char *rare[] = {"superseded", "skipped", "deleted", "unknown"};
    for (size_t i = 0; i < sizeof(rare) / sizeof(rare[0]); i++)
        if (num(s, rare[i]) != 0)
            printf("  %s %lld", rare[i], num(s, rare[i]));
    printf("\n");
}

/* Follows the rollout of tenant's version through the controller's wait
 * call, one step at a time so progress can be shown. Returns the exit
 * status: RC_OK when it went live on the wanted fraction of agents (even
 * where a newer version has replaced it since), RC_NACKED when an agent
 * refused it, RC_UNREACHABLE when it can no longer go live on enough
 * agents (they got a newer version or the tenant's delete first),
 * RC_TIMEOUT or RC_NO_AGENTS when --timeout passed without it (with
 * agents reporting, or without any), RC_FAILED when a request failed or
 * the controller stopped during the wait. */
static int wait_live(cli *c, const char *tenant, long long version)
{
    double fraction = c->fraction;
    long long timeout_s = c->timeout_s;
    int64_t start = pc_mono_ms(), deadline = start + timeout_s * 1000;
    long long last_live = -1, last_total = -1;
    int64_t last_line = start;
    for (;;) {
        int64_t left = deadline - pc_mono_ms();
        int64_t step = left < WAIT_STEP_MS ? (left > 0 ? left : 1) : WAIT_STEP_MS;
        char url[256];
        snprintf(url, sizeof(url), "/v1/tenants/%s/versions/%lld/rollout?wait=%lld&fraction=%g",
                 tenant, version, (long long)step, fraction);
        json_t *doc = call(c, "GET", url, NULL, NULL, 0);
        if (doc == NULL)
            return RC_FAILED;
        json_t *s = json_object_get(doc, "summary");
        const char *why = str(doc, "wait");
        if (strcmp(why, "shutdown") == 0) {
            /* The answer holds no rollout: the controller is stopping. */
            if (c->json)
                print_json(doc);
            json_decref(doc);
            fprintf(stderr,
                    "popcast: the controller stopped during the wait; ask another one: popcast "
                    "rollout %s %lld --wait\n",
                    tenant, version);
            return RC_FAILED;
        }
        bool complete = json_is_true(json_object_get(s, "complete"));
        bool failed = json_is_true(json_object_get(s, "failed"));
        bool unreachable = strcmp(why, "unreachable") == 0;
        bool over = pc_mono_ms() >= deadline;
        if (!c->json && (num(s, "live") != last_live || num(s, "total") != last_total)) {
            printf("waiting: %s v%lld live on %lld of %lld agents (%.1f s)\n", tenant, version,
                   num(s, "live"), num(s, "total"), (double)(pc_mono_ms() - start) / 1000.0);
            last_live = num(s, "live");
            last_total = num(s, "total");
            last_line = pc_mono_ms();
        } else if (!c->json && pc_mono_ms() - last_line >= QUIET_LINE_MS) {
            /* Nothing moved for a while: say who it is waiting for. */
            printf(
                "still waiting: %s v%lld live on %lld of %lld agents (%.1f s); not yet: ", tenant,
                version, num(s, "live"), num(s, "total"), (double)(pc_mono_ms() - start) / 1000.0);
            print_not_yet(doc);
            last_line = pc_mono_ms();
        }
        if (complete || failed || unreachable || over) {
            int rc = complete && !failed    ? RC_OK
                     : failed               ? RC_NACKED
                     : unreachable          ? RC_UNREACHABLE
                     : num(s, "total") == 0 ? RC_NO_AGENTS
                                            : RC_TIMEOUT;
            if (c->json) {
                print_json(doc);
            } else if (complete && !failed) {
                printf("live: %s v%lld is live on %lld/%lld agents after %.1f s\n", tenant, version,
                       num(s, "live"), num(s, "total"), (double)(pc_mono_ms() - start) / 1000.0);
            } else if (failed) {
                printf("refused: %s v%lld was nacked by %lld agent(s); they keep serving the "
                       "previous version\n",
                       tenant, version, num(s, "nacked"));
                print_agents_in(doc, "nacked");
                print_summary(doc);
            } else if (unreachable) {
                printf("unreachable: %s v%lld can no longer be live on the wanted agents: %lld got "
                       "a newer version first, %lld the tenant's delete, %lld do not know it\n",
                       tenant, version, num(s, "skipped"), num(s, "deleted"), num(s, "unknown"));
                print_agents_in(doc, "skipped");
                print_agents_in(doc, "deleted");
                print_agents_in(doc, "unknown");
                print_summary(doc);
            } else if (num(s, "total") == 0) {
                printf("timeout: no agent reports to this controller, so %s v%lld is live "
                       "nowhere that can be shown\n",
                       tenant, version);
            } else {
                printf("timeout: %s v%lld is not live everywhere after %lld s\n", tenant, version,
                       timeout_s);
                print_agents_in(doc, "missing");
                print_summary(doc);
            }
            json_decref(doc);
            return rc;
        }
        json_decref(doc);
    }
}

static int cmd_rollout(cli *c)
{
    const char *tenant = c->args[0];
    long long version = strtoll(c->args[1], NULL, 10);
    if (c->wait)
        return wait_live(c, tenant, version);
    char url[256];
    snprintf(url, sizeof(url), "/v1/tenants/%s/versions/%lld/rollout", tenant, version);
    json_t *doc = call(c, "GET", url, NULL, NULL, 0);
    if (doc == NULL)
        return 1;
    if (c->json) {
        print_json(doc);
    } else {
        printf("%s v%lld (seq %lld, %s)\n", tenant, version, num(doc, "seq"), str(doc, "kind"));
        print_summary(doc);
        printf("%-20s %-10s %-10s %-8s %-8s %-9s %-7s %s\n", "AGENT", "POP", "STATE", "APPLIED",
               "LIVE", "REQUESTS", "ERRORS", "DETAIL");
        size_t i;
        json_t *a;
        json_array_foreach(json_object_get(doc, "agents"), i, a)
        {
            char detail[512] = "";
            if (json_object_get(a, "reason") != NULL)
                snprintf(detail, sizeof(detail), "%s: %s", str(a, "reason"), str(a, "detail"));
            else if (json_is_true(json_object_get(a, "stale")))
                snprintf(detail, sizeof(detail), "stale");
            /* What this version's code did there (errors: failures and
             * the handler's own 5xx), or "-" when the agent reported none. */
            json_t *t = json_object_get(a, "traffic");
            char requests[24] = "-", errors[24] = "-";
            if (t != NULL) {
                snprintf(requests, sizeof(requests), "%lld", num(t, "requests"));
                snprintf(errors, sizeof(errors), "%lld",
                         num(t, "errors") + num(t, "status_5xx") + num(t, "limit_kills"));
            }
            printf("%-20s %-10s %-10s %-8lld %-8lld %-9s %-7s %s\n", str(a, "agent_id"),
                   str(a, "pop"), str(a, "state"), num(a, "applied_version"),
                   num(a, "live_version"), requests, errors, detail);
        }
    }
    json_decref(doc);
    return 0;
}

static void print_rates(const char *label, json_t *r)
{
    printf("%-10s %-9lld %-8lld %-8lld %-11lld %-7lld %6.2f%%  %6.2f%%\n", label,
           num(r, "requests"), num(r, "errors"), num(r, "status_5xx"), num(r, "limit_kills"),
           num(r, "agents"), 100 * json_real_value(json_object_get(r, "error_rate")),
           100 * json_real_value(json_object_get(r, "limit_kill_rate")));
}

/* The health gate's verdict (docs/api.md): exit RC_OK on pass,
 * RC_UNHEALTHY on fail, RC_TOO_FEW while there are too few requests. */
static int cmd_health(cli *c)
{
    const char *tenant = c->args[0];
    long long version = strtoll(c->args[1], NULL, 10);
    char url[256];
    int n = snprintf(url, sizeof(url), "/v1/tenants/%s/versions/%lld/health", tenant, version);
    const char *sep = "?";
    if (c->baseline > 0) {
        n += snprintf(url + n, sizeof(url) - (size_t)n, "%sbaseline=%lld", sep, c->baseline);
        sep = "&";
    }
    if (c->min_requests > 0)
        snprintf(url + n, sizeof(url) - (size_t)n, "%smin_requests=%lld", sep, c->min_requests);
    json_t *doc = call(c, "GET", url, NULL, NULL, 0);
    if (doc == NULL)
        return RC_FAILED;
    const char *verdict = str(doc, "verdict");
    if (c->json) {
        print_json(doc);
    } else {
        printf("%s v%lld against v%lld: %s\n  %s\n", tenant, version, num(doc, "baseline"), verdict,
               str(doc, "reason"));
        printf("%-10s %-9s %-8s %-8s %-11s %-7s %-8s %s\n", "", "REQUESTS", "ERRORS", "5XX",
               "LIMIT_KILLS", "AGENTS", "ERRORS%", "KILLS%");
        print_rates("version", json_object_get(doc, "candidate"));
        print_rates("baseline", json_object_get(doc, "baseline_on_same_agents"));
    }
    int rc = strcmp(verdict, "pass") == 0   ? RC_OK
             : strcmp(verdict, "fail") == 0 ? RC_UNHEALTHY
                                            : RC_TOO_FEW;
    json_decref(doc);
    return rc;
}

static int cmd_fleet(cli *c)
{
    json_t *doc = call(c, "GET", "/v1/fleet", NULL, NULL, 0);
    if (doc == NULL)
        return 1;
    if (c->json) {
        print_json(doc);
    } else {
        printf("head seq %lld\n", num(doc, "head_seq"));
        printf("%-20s %-10s %-10s %-8s %-12s %s\n", "AGENT", "POP", "APPLIED", "LAG", "LAST SEEN",
               "STATE");
        size_t i;
        json_t *a;
        json_array_foreach(json_object_get(doc, "agents"), i, a)
        {
            const char *state = json_is_true(json_object_get(a, "gone"))    ? "gone"
                                : json_is_true(json_object_get(a, "stale")) ? "stale"
                                                                            : "ok";
            char seen[32];
            snprintf(seen, sizeof(seen), "%.1f s ago", (double)num(a, "last_seen_ms_ago") / 1000.0);
            printf("%-20s %-10s %-10lld %-8lld %-12s %s\n", str(a, "agent_id"), str(a, "pop"),
                   num(a, "applied_seq"), num(a, "lag"), seen, state);
        }
    }
    json_decref(doc);
    return 0;
}

static int print_cluster(cli *c, json_t *doc)
{
    if (c->json) {
        print_json(doc);
        return 0;
    }
    printf("this node %lld (%s), leader %lld, term %lld, commit index %lld, applied %lld\n",
           num(doc, "id"), str(doc, "role"), num(doc, "leader_id"), num(doc, "term"),
           num(doc, "commit_index"), num(doc, "last_applied"));
    printf("%-6s %-8s %-22s %s\n", "ID", "ROLE", "RAFT ADDRESS", "API");
    size_t i;
    json_t *n;
    json_array_foreach(json_object_get(doc, "nodes"), i, n)
    {
        printf("%-6lld %-8s %-22s %s%s\n", num(n, "id"), str(n, "role"), str(n, "raft_address"),
               str(n, "api_url"), json_is_true(json_object_get(n, "leader")) ? "  (leader)" : "");
    }
    return 0;
}

static int cmd_cluster(cli *c)
{
    json_t *doc = call(c, "GET", "/v1/cluster", NULL, NULL, 0);
    if (doc == NULL)
        return 1;
    int rc = print_cluster(c, doc);
    json_decref(doc);
    return rc;
}

static int cmd_cluster_add(cli *c)
{
    long long id = strtoll(c->args[0], NULL, 10);
    json_t *body = json_pack("{s:I,s:s,s:s}", "id", (json_int_t)id, "raft_address", c->args[1],
                             "api_url", c->args[2]);
    json_t *doc = post_json(c, "/v1/cluster/nodes", body);
    if (doc == NULL)
        return 1;
    int rc = print_cluster(c, doc);
    json_decref(doc);
    return rc;
}

static int cmd_cluster_remove(cli *c)
{
    long long id = strtoll(c->args[0], NULL, 10);
    char path[64];
    snprintf(path, sizeof(path), "/v1/cluster/nodes/%lld", id);
    json_t *doc = call(c, "DELETE", path, NULL, NULL, 0);
    if (doc == NULL)
        return 1;
    int rc = print_cluster(c, doc);
    json_decref(doc);
    return rc;
}

/* The first line of a key or authorization file (the API parses and
 * checks it). */
static int read_first_line(const char *path, char *out, size_t cap)
{
    uint8_t *text = NULL;
    size_t len = 0;
    if (read_file(path, &text, &len) != 0 || len > 4096) {
        free(text);
        return fail("cannot read %s (or it is over 4 KiB)", path);
    }
    snprintf(out, cap, "%.*s", (int)len, (const char *)text);
    free(text);
    out[strcspn(out, "\r\n")] = '\0';
    return 0;
}

/* DELETE collection + args[0]; says "<what> <id> revoked<consequence>". */
static int revoke_id(cli *c, const char *collection, const char *what, const char *consequence)
{
    char path[200];
    snprintf(path, sizeof(path), "%s%.128s", collection, c->args[0]);
    json_t *doc = call(c, "DELETE", path, NULL, NULL, 0);
    if (doc == NULL)
        return 1;
    if (c->json)
        print_json(doc);
    else
        printf("%s %s revoked%s\n", what, c->args[0], consequence);
    json_decref(doc);
    return 0;
}

static int cmd_agent_enroll(cli *c)
{
    char key[4100];
    if (read_first_line(c->args[1], key, sizeof(key)) != 0)
        return 1;
    json_t *body = json_pack("{s:s,s:s}", "agent_id", c->args[0], "public_key", key);
    json_t *doc = post_json(c, "/v1/agents", body);
    if (doc == NULL)
        return 1;
    if (c->json)
        print_json(doc);
    else
        printf("agent %s enrolled: its signed reports are trusted\n", c->args[0]);
    json_decref(doc);
    return 0;
}

static int cmd_agent_list(cli *c)
{
    json_t *doc = call(c, "GET", "/v1/agents", NULL, NULL, 0);
    if (doc == NULL)
        return 1;
    if (c->json) {
        print_json(doc);
    } else {
        printf("%-24s %-18s %s\n", "AGENT", "KEY ID", "STATE");
        size_t i;
        json_t *a;
        json_array_foreach(json_object_get(doc, "agents"), i, a)
            printf("%-24s %-18s %s\n", str(a, "agent_id"), str(a, "key_id"),
                   json_is_true(json_object_get(a, "revoked")) ? "revoked" : "enrolled");
    }
    json_decref(doc);
    return 0;
}

static int cmd_agent_revoke(cli *c)
{
    return revoke_id(c, "/v1/agents/", "agent", ": its reports are refused");
}

/* Offline: a root key's permission to replace the signing key --replaces
 * by NEXT. Needs no controller; prints the authorization's text form. */
static int cmd_key_authorize(cli *c)
{
    pc_signing_key root;
    pc_public_key next;
    pc_err err;
    uint8_t replaces[PC_KEY_ID_LEN];
    if (pc_unhex(replaces, PC_KEY_ID_LEN, c->replaces) != PC_OK) /* checked by parse() */
        return fail("'%s' is not a key id", c->replaces);
    if (pc_key_read_secret(c->args[0], &root, &err) != PC_OK ||
        pc_key_read_public(c->args[1], &next, &err) != PC_OK)
        return fail("%s", err.msg);
    Popcast__RotationAuthorization a = POPCAST__ROTATION_AUTHORIZATION__INIT;
    a.next_public_key.data = next.pk;
    a.next_public_key.len = PC_PK_LEN;
    a.replaces_key_id.data = replaces;
    a.replaces_key_id.len = PC_KEY_ID_LEN;
    a.created_unix_ms = pc_wall_ms();
    Popcast__SignedRotationAuthorization sa;
    char *text = NULL;
    int rc = pc_envelope_sign_authorization(&root, &a, &sa, &err);
    pc_signing_key_wipe(&root);
    if (rc == PC_OK) {
        rc = pc_authorization_format(&sa, &text, &err);
        free(sa.authorization.data);
        free(sa.signature.data);
        free(sa.key_id.data);
    }
    if (rc != PC_OK)
        return fail("%s", err.msg);
    printf("%s\n", text);
    free(text);
    return 0;
}

static int cmd_key_rotate(cli *c)
{
    char next[4100], root[4100], auth[4100];
    if (read_first_line(c->args[0], next, sizeof(next)) != 0 ||
        (c->root_key != NULL && read_first_line(c->root_key, root, sizeof(root)) != 0) ||
        (c->authorization != NULL && read_first_line(c->authorization, auth, sizeof(auth)) != 0))
        return 1;
    json_t *body = json_pack("{s:s}", "next_public_key", next);
    if (body != NULL && c->root_key != NULL)
        json_object_set_new(body, "root_key", json_string(root));
    if (body != NULL && c->authorization != NULL)
        json_object_set_new(body, "authorization", json_string(auth));
    json_t *doc = post_json(c, "/v1/keys/rotate", body);
    if (doc == NULL)
        return 1;
    if (c->json)
        print_json(doc);
    else
        printf("signing key rotated at seq %lld: entries after it are signed by %s only\n"
               "(agents switch when they apply seq %lld: see `popcast fleet`)\n",
               (long long)json_integer_value(json_object_get(doc, "seq")), str(doc, "key_id"),
               (long long)json_integer_value(json_object_get(doc, "seq")));
    json_decref(doc);
    return 0;
}

static int cmd_key_list(cli *c)
{
    json_t *doc = call(c, "GET", "/v1/keys", NULL, NULL, 0);
    if (doc == NULL)
        return 1;
    if (c->json) {
        print_json(doc);
    } else {
        json_t *cur = json_object_get(doc, "current");
        if (!json_is_object(cur))
            printf("no signing key yet: no rotation, and this controller holds no root key "
                   "(make the first rotation with `popcast key authorize`)\n");
        else
            printf("current signing key %s since seq %lld%s\n", str(cur, "key_id"),
                   (long long)json_integer_value(json_object_get(doc, "current_since_seq")),
                   json_is_true(json_object_get(cur, "held")) ? ""
                                                              : " (NOT held by this controller)");
        size_t i;
        json_t *k;
        json_array_foreach(json_object_get(doc, "roots"), i, k)
            printf("root key %s\n", str(k, "key_id"));
        json_array_foreach(json_object_get(doc, "rotations"), i, k)
            printf("rotation at seq %lld to %s, signed by %s\n",
                   (long long)json_integer_value(json_object_get(k, "seq")), str(k, "key_id"),
                   str(k, "signed_by"));
    }
    json_decref(doc);
    return 0;
}

static int cmd_token_create(cli *c)
{
    json_t *tenants = json_array();
    for (int i = 0; i < c->n_tenants; i++)
        json_array_append_new(tenants, json_string(c->tenants[i]));
    json_t *body = json_pack("{s:o}", "tenants", tenants);
    if (c->name != NULL)
        json_object_set_new(body, "name", json_string(c->name));
    json_t *doc = post_json(c, "/v1/tokens", body);
    if (doc == NULL)
        return 1;
    if (c->json) {
        print_json(doc);
    } else {
        printf("token   %s\nid      %s\ntenants", str(doc, "token"), str(doc, "id"));
        size_t i;
        json_t *t;
        json_array_foreach(json_object_get(doc, "tenants"), i, t)
            printf("%s%s", i ? "," : " ", json_string_value(t));
        printf("\nkeep the token now: only its hash is stored, it cannot be shown again\n");
    }
    json_decref(doc);
    return 0;
}

static int cmd_token_list(cli *c)
{
    json_t *doc = call(c, "GET", "/v1/tokens", NULL, NULL, 0);
    if (doc == NULL)
        return 1;
    if (c->json) {
        print_json(doc);
    } else {
        printf("%-18s %-20s %-8s %s\n", "ID", "NAME", "STATE", "TENANTS");
        size_t i;
        json_t *t;
        json_array_foreach(json_object_get(doc, "tokens"), i, t)
        {
            char tenants[1024] = "";
            size_t k;
            json_t *name;
            json_array_foreach(json_object_get(t, "tenants"), k, name)
            {
                size_t used = strlen(tenants);
                snprintf(tenants + used, sizeof(tenants) - used, "%s%s", k ? "," : "",
                         json_string_value(name));
            }
            printf("%-18s %-20s %-8s %s\n", str(t, "id"), str(t, "name"),
                   json_is_true(json_object_get(t, "revoked")) ? "revoked" : "active", tenants);
        }
    }
    json_decref(doc);
    return 0;
}

static int cmd_token_revoke(cli *c)
{
    return revoke_id(c, "/v1/tokens/", "token", "");
}

/* What the agents serve of a tenant (the tenant document's "serving"):
 * e.g. "serving        v3 on 2, v2 on 1 (of 3 agents)". */
static void print_serving(json_t *sv)
{
    if (!json_is_object(sv) || num(sv, "agents") == 0) {
        printf("serving        unknown: no agent reports to this controller\n");
        return;
    }
    printf("serving        ");
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(sv, "versions"), i, v)
        printf("%sv%lld on %lld", i ? ", " : "", num(v, "version"), num(v, "agents"));
    if (num(sv, "none") != 0)
        printf("%snothing on %lld", json_array_size(json_object_get(sv, "versions")) ? ", " : "",
               num(sv, "none"));
    printf(" (of %lld agents", num(sv, "agents"));
    if (num(sv, "stale") != 0)
        printf(", %lld stale", num(sv, "stale"));
    printf(")\n");
}

/* popcast watch: GET /v1/watch, one line per event. */
typedef struct watch_state {
    cli *c;
    const char *tenant; /* only its events (NULL: all) */
    bool tail;          /* popcast tail: the stream of a tenant's log lines */
    int status;
    pc_sse sse;
    char error[4096]; /* an error answer's body */
    size_t error_len;
    long long printed;
    int rc; /* set when the stream says it ends: compacted, cut */
    bool done;
} watch_state;

static void watch_head(void *arg, int status)
{
    ((watch_state *)arg)->status = status;
}

/* One of a tenant's log lines (popcast tail). */
static void print_tail_line(json_t *d)
{
    const char *kind = str(d, "kind");
    printf("%s %s (%s) v%lld %s: ", str(d, "time"), str(d, "agent"), str(d, "pop"),
           num(d, "version"), kind);
    if (strcmp(kind, "print") == 0)
        printf("%s\n", str(d, "message"));
    else if (strcmp(kind, "error") == 0)
        printf("%s %s %lld: %s\n", str(d, "method"), str(d, "path"), num(d, "status"),
               str(d, "message"));
    else
        printf("%s %s %lld %.1f ms\n", str(d, "method"), str(d, "path"), num(d, "status"),
               (double)num(d, "duration_us") / 1000.0);
}

static void print_watch_event(watch_state *w, const char *type, const char *id, json_t *d)
{
    const char *tenant = json_string_value(json_object_get(d, "tenant"));
    if (w->tenant != NULL && (tenant == NULL || strcmp(tenant, w->tenant) != 0) &&
        strcmp(type, "compacted") != 0 && strcmp(type, "cut") != 0)
        return;
    if (w->c->json) {
        json_t *o = json_pack("{s:I,s:s,s:O}", "id", (json_int_t)strtoll(id, NULL, 10), "event",
                              type, "data", d);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (text != NULL)
            printf("%s\n", text);
        free(text);
        json_decref(o);
    } else if (strcmp(type, "entry") == 0) {
        const char *msg = str(d, "message");
        printf("seq %lld  %s %s v%lld by %s%s%s%s\n", num(d, "seq"), str(d, "kind"),
               str(d, "tenant"), num(d, "version"), str(d, "author"),
               json_is_true(json_object_get(d, "targeted")) ? " (targeted)" : "",
               strcmp(msg, "-") != 0 ? ": " : "", strcmp(msg, "-") != 0 ? msg : "");
    } else if (strcmp(type, "rollout") == 0) {
        printf("        %s (%s) %s: live v%lld, applied v%lld", str(d, "agent_id"), str(d, "pop"),
               str(d, "tenant"), num(d, "live_version"), num(d, "applied_version"));
        if (num(d, "split_version") != 0)
            printf(", split with v%lld", num(d, "split_version"));
        printf("\n");
    } else if (strcmp(type, "deployment") == 0) {
        json_t *events = json_object_get(d, "events");
        json_t *last = json_array_get(events, json_array_size(events) - 1);
        printf("        deployment %lld of %s v%lld: %s, stage %lld of %lld; %s%s%s\n",
               num(d, "id"), str(d, "tenant"), num(d, "version"), str(d, "state"), num(d, "stage"),
               num(d, "stages_total"), str(last, "what"), event_detail(last)[0] ? ": " : "",
               event_detail(last));
    } else if (strcmp(type, "line") == 0) {
        print_tail_line(d);
    } else if (strcmp(type, "dropped") == 0) {
        printf("%s %s (%s): %lld lines dropped, %lld request lines sampled out\n", str(d, "tenant"),
               str(d, "agent"), str(d, "pop"), num(d, "dropped"), num(d, "sampled_out"));
    } else {
        printf("%s: %s\n", type, str(d, strcmp(type, "cut") == 0 ? "reason" : "message"));
    }
    fflush(stdout);
    w->printed++;
}

static bool watch_event(void *arg, const pc_sse_event *e)
{
    watch_state *w = arg;
    json_t *d = json_loads(e->data, 0, NULL);
    if (d == NULL)
        return true; /* not one of popcast's events */
    print_watch_event(w, e->type, e->id, d);
    json_decref(d);
    if (strcmp(e->type, "compacted") == 0) {
        w->rc = RC_UNREACHABLE;
        w->done = true;
    } else if (strcmp(e->type, "cut") == 0) {
        w->rc = RC_FAILED;
        w->done = true;
    } else if (w->c->events > 0 && w->printed >= w->c->events) {
        w->done = true;
    }
    return !w->done;
}

static bool watch_body(void *arg, const char *data, size_t len)
{
    watch_state *w = arg;
    if (w->status != 200) { /* an error's body: kept, then printed */
        size_t room = sizeof(w->error) - 1 - w->error_len;
        memcpy(w->error + w->error_len, data, len < room ? len : room);
        w->error_len += len < room ? len : room;
        return true;
    }
    if (!pc_sse_feed(&w->sse, data, len, watch_event, w) && !w->done) {
        w->rc = RC_FAILED;
        w->done = true;
        fprintf(stderr, "popcast: the stream is not one of events\n");
    }
    return !w->done;
}

/* Follows the stream at path until it ends, --count events were printed,
 * or an error; the exit code. */
static int follow_stream(cli *c, const char *path, bool tail)
{
    char auth[300];
    const char *headers[3] = {NULL};
    if (c->token != NULL) {
        snprintf(auth, sizeof(auth), "Bearer %s", c->token);
        headers[0] = "Authorization";
        headers[1] = auth;
    }
    watch_state w = {.c = c, .tenant = c->nargs > 0 ? c->args[0] : NULL, .tail = tail};
    pc_err err;
    int rc = pc_http_stream(c->controller, path, headers, 0, watch_head, watch_body, &w, &err);
    pc_sse_free(&w.sse);
    if (rc != PC_OK)
        return fail("%s", err.msg);
    if (w.status != 200) {
        json_t *doc = json_loadb(w.error, w.error_len, 0, NULL);
        json_t *e = json_object_get(doc, "error");
        fail("%d %s: %s", w.status, str(e, "code"), str(e, "message"));
        json_decref(doc);
        return RC_FAILED;
    }
    if (w.done)
        return w.rc;
    if (tail)
        fprintf(stderr, "popcast: the controller ended the tail; tail again\n");
    else
        fprintf(stderr, "popcast: the controller ended the stream; watch again with --from and "
                        "the last seq printed\n");
    return RC_FAILED;
}

static int cmd_watch(cli *c)
{
    char path[160] = "/v1/watch";
    size_t n = strlen(path);
    if (c->given[O_FROM])
        n += (size_t)snprintf(path + n, sizeof(path) - n, "?from=%lld", c->from);
    if (c->nargs > 0) /* only its events come */
        snprintf(path + n, sizeof(path) - n, "%ctenant=%s", c->given[O_FROM] ? '&' : '?',
                 c->args[0]);
    return follow_stream(c, path, false);
}

/* popcast tail: GET /v1/tenants/T/tail, one line per log line. */
static int cmd_tail(cli *c)
{
    char path[160];
    snprintf(path, sizeof(path), "/v1/tenants/%s/tail", c->args[0]);
    return follow_stream(c, path, true);
}

static int cmd_status(cli *c)
{
    char url[256];
    if (c->nargs == 1) {
        snprintf(url, sizeof(url), "/v1/tenants/%s", c->args[0]);
    } else {
        snprintf(url, sizeof(url), "/v1/tenants");
    }
    json_t *doc = call(c, "GET", url, NULL, NULL, 0);
    if (doc == NULL)
        return 1;
    if (c->json) {
        print_json(doc);
    } else if (c->nargs == 1) {
        printf("tenant         %s\n", str(doc, "tenant"));
        printf("requested      v%lld%s (the controllers' active version)\n",
               num(doc, "active_version"),
               json_is_true(json_object_get(doc, "deleted")) ? ", deleted" : "");
        print_serving(json_object_get(doc, "serving"));
        printf("active seq     %lld\n", num(doc, "active_seq"));
        printf("active hash    %s\n", str(doc, "active_hash"));
        printf("versions       %zu\n", json_array_size(json_object_get(doc, "versions")));
    } else {
        printf("%-24s %-8s %-8s %s\n", "TENANT", "ACTIVE", "LAST", "STATE");
        size_t i;
        json_t *t;
        json_array_foreach(json_object_get(doc, "tenants"), i, t)
        {
            printf("%-24s %-8lld %-8lld %s\n", str(t, "tenant"), num(t, "active_version"),
                   num(t, "last_version"),
                   json_is_true(json_object_get(t, "deleted")) ? "deleted" : "active");
        }
    }
    json_decref(doc);
    return 0;
}

/* The command line's grammar. */

/* Checks one value; on failure writes why (naming the value) and returns
 * false. label: the option or argument the value was given for. */
typedef bool (*check_fn)(const char *label, const char *value, char *why, size_t cap);

/* The value checks. Each sentence names the value it refuses. */

__attribute__((format(printf, 3, 4))) static bool refuse(char *why, size_t cap, const char *fmt,
                                                         ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, cap, fmt, ap);
    va_end(ap);
    return false;
}

/* A whole decimal number from min to max: digits only, no sign, no
 * blanks. */
static bool whole(const char *s, long long min, long long max, long long *out)
{
    if (s[0] < '0' || s[0] > '9')
        return false;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

static bool fraction_of(const char *s, double *out)
{
    char *end = NULL;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || !(v > 0.0 && v <= 1.0))
        return false;
    *out = v;
    return true;
}

static bool check_tenant(const char *label, const char *v, char *why, size_t cap)
{
    return pc_tenant_name_valid(v) ||
           refuse(why, cap, "%s '%s' is not a tenant name (1 to 63 of a-z, 0-9, '-')", label, v);
}

static bool check_version(const char *label, const char *v, char *why, size_t cap)
{
    long long n;
    return whole(v, 1, LLONG_MAX, &n) ||
           refuse(why, cap, "%s '%s' is not a version number (1 or more)", label, v);
}

static bool check_node_id(const char *label, const char *v, char *why, size_t cap)
{
    long long n;
    return whole(v, 1, LLONG_MAX, &n) ||
           refuse(why, cap, "%s '%s' is not a node id (a number >= 1)", label, v);
}

static bool check_min_requests(const char *label, const char *v, char *why, size_t cap)
{
    long long n;
    return whole(v, 1, 1000000000, &n) ||
           refuse(why, cap, "%s must be a count from 1 to 1000000000, not '%s'", label, v);
}

static bool check_from(const char *label, const char *v, char *why, size_t cap)
{
    long long n;
    return whole(v, 0, LLONG_MAX, &n) ||
           refuse(why, cap, "%s must be a seq (a whole number from 0), not '%s'", label, v);
}

static bool check_timeout(const char *label, const char *v, char *why, size_t cap)
{
    long long n;
    return whole(v, 1, 86400, &n) ||
           refuse(why, cap, "%s must be whole seconds from 1 to 86400, not '%s'", label, v);
}

static bool check_retry_for(const char *label, const char *v, char *why, size_t cap)
{
    long long n;
    return whole(v, 0, 3600, &n) ||
           refuse(why, cap, "%s must be whole seconds from 0 to 3600, not '%s'", label, v);
}

static bool check_fraction(const char *label, const char *v, char *why, size_t cap)
{
    double f;
    return fraction_of(v, &f) ||
           refuse(why, cap, "%s must be a number in (0, 1], not '%s'", label, v);
}

static bool check_idempotency_key(const char *label, const char *v, char *why, size_t cap)
{
    return pc_idempotency_key_valid(v) ||
           refuse(why, cap, "%s must be 1 to 64 of A-Z, a-z, 0-9, '.', '_', ':', '-', not '%s'",
                  label, v);
}

static bool check_message(const char *label, const char *v, char *why, size_t cap)
{
    return pc_change_message_valid(v) ||
           refuse(why, cap, "%s must be %s", label, PC_CHANGE_MESSAGE_RULE);
}

static bool check_runtime(const char *label, const char *v, char *why, size_t cap)
{
    return pc_runtime_name_valid(v) ||
           refuse(why, cap, "%s '%s' is not a runtime name (1 to 32 of a-z, 0-9)", label, v);
}

static bool check_entrypoint(const char *label, const char *v, char *why, size_t cap)
{
    return pc_bundle_path_valid(v) ||
           refuse(why, cap,
                  "%s '%s' is not a path inside a bundle (relative, '/'-separated parts of "
                  "A-Z, a-z, 0-9, '.', '_', '-', none '.' or '..')",
                  label, v);
}

static bool check_id(const char *label, const char *v, char *why, size_t cap)
{
    return pc_id_valid(v) ||
           refuse(why, cap, "%s '%s' is not an id (1 to 128 of A-Z, a-z, 0-9, '.', '_', '-')",
                  label, v);
}

static bool check_split(const char *label, const char *v, char *why, size_t cap)
{
    long long n;
    return whole(v, 1, 999, &n) ||
           refuse(why, cap, "%s '%s' is not a whole number from 1 to 999", label, v);
}

static bool check_split_key(const char *label, const char *v, char *why, size_t cap)
{
    return pc_target_split_key_valid(v) ||
           refuse(why, cap, "%s '%s' is not a header name ([a-z0-9-], 1 to 64) or cookie:NAME",
                  label, v);
}

static bool check_permille(const char *label, const char *v, char *why, size_t cap)
{
    long long n;
    return whole(v, 0, PC_TARGET_EVERYONE, &n) ||
           refuse(why, cap, "%s '%s' is not a whole number from 0 to 1000", label, v);
}

static bool check_key_name(const char *label, const char *v, char *why, size_t cap)
{
    return pc_id_valid(v) ||
           refuse(why, cap, "%s '%s' is not a key name (1 to 128 of A-Z, a-z, 0-9, '.', '_', '-')",
                  label, v);
}

static bool check_token_name(const char *label, const char *v, char *why, size_t cap)
{
    return (pc_id_valid(v) && strlen(v) <= 64) ||
           refuse(why, cap, "%s '%s' is not a token name (1 to 64 of A-Z, a-z, 0-9, '.', '_', '-')",
                  label, v);
}

static bool check_token_id(const char *label, const char *v, char *why, size_t cap)
{
    return (strlen(v) == 16 && strspn(v, "0123456789abcdef") == 16) ||
           refuse(why, cap, "%s '%s' is not a token id (16 hex digits, from `popcast token list`)",
                  label, v);
}

static bool check_key_id(const char *label, const char *v, char *why, size_t cap)
{
    uint8_t id[PC_KEY_ID_LEN];
    return (strlen(v) == 2 * PC_KEY_ID_LEN && pc_unhex(id, PC_KEY_ID_LEN, v) == PC_OK) ||
           refuse(why, cap,
                  "%s '%s' is not a key id (16 hex digits: the current signing key, from "
                  "`popcast key list`)",
                  label, v);
}

static bool check_nonempty(const char *label, const char *v, char *why, size_t cap)
{
    return v[0] != '\0' || refuse(why, cap, "%s needs a value, not '%s'", label, v);
}

/* A file this process can open for reading (not a directory). Opens it
 * non-blocking so a FIFO without a writer cannot hang the check. */
static bool check_file(const char *label, const char *v, char *why, size_t cap)
{
    int fd = open(v, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(why, cap, "%s: cannot read %s: %s", label, v, strerror(errno));
        if (fd >= 0)
            close(fd);
        return false;
    }
    close(fd);
    return !S_ISDIR(st.st_mode) || refuse(why, cap, "%s: %s is a directory, not a file", label, v);
}

/* --plan FILE: readable JSON, an array of 1 to 8 stage objects (the
 * controller checks each stage; a file that is not even that is refused
 * before anything, an upload included, is sent). */
static bool check_plan_file(const char *label, const char *v, char *why, size_t cap)
{
    if (!check_file(label, v, why, cap))
        return false;
    json_error_t jerr;
    json_t *plan = json_load_file(v, 0, &jerr);
    bool ok = plan != NULL && json_is_array(plan) && json_array_size(plan) >= 1 &&
              json_array_size(plan) <= 8;
    for (size_t i = 0; ok && i < json_array_size(plan); i++)
        ok = json_is_object(json_array_get(plan, i));
    if (plan == NULL)
        snprintf(why, cap, "%s: %s:%d: %s", label, v, jerr.line, jerr.text);
    else if (!ok)
        snprintf(why, cap, "%s: %s is not a JSON array of 1 to 8 stage objects", label, v);
    json_decref(plan);
    return ok;
}

/* deploy's PATH: a readable file, or a directory that can be listed. */
/* deploy's second argument: a version number (no file of that name):
 * deploy that stored version through a deployment. */
static bool is_version_arg(const char *v)
{
    struct stat st;
    long long n;
    return whole(v, 1, LLONG_MAX, &n) && stat(v, &st) != 0;
}

static bool check_deploy_what(const char *label, const char *v, char *why, size_t cap);

static bool check_bundle_path(const char *label, const char *v, char *why, size_t cap)
{
    struct stat st;
    if (stat(v, &st) == 0 && S_ISDIR(st.st_mode)) {
        DIR *d = opendir(v);
        if (d == NULL) {
            snprintf(why, cap, "%s: cannot read %s: %s", label, v, strerror(errno));
            return false;
        }
        closedir(d);
        return true;
    }
    return check_file(label, v, why, cap);
}

static bool check_deploy_what(const char *label, const char *v, char *why, size_t cap)
{
    return is_version_arg(v) || check_bundle_path(label, v, why, cap);
}

static bool check_out_dir(const char *label, const char *v, char *why, size_t cap)
{
    struct stat st;
    if (stat(v, &st) == 0 && !S_ISDIR(st.st_mode))
        return refuse(why, cap, "%s: %s is not a directory", label, v);
    if (stat(v, &st) != 0 || access(v, W_OK | X_OK) != 0) {
        snprintf(why, cap, "%s: cannot write in %s: %s", label, v, strerror(errno));
        return false;
    }
    return true;
}

static bool check_url(const char *label, const char *v, char *why, size_t cap)
{
    nng_url *u = NULL;
    bool ok = nng_url_parse(&u, v) == 0 &&
              (strcmp(u->u_scheme, "http") == 0 || strcmp(u->u_scheme, "https") == 0) &&
              u->u_hostname[0] != '\0';
    nng_url_free(u);
    return ok || refuse(why, cap, "%s '%s' is not an http:// or https:// URL", label, v);
}

/* RAFT_ADDR: HOST:PORT, the port a number from 1 to 65535. */
static bool check_host_port(const char *label, const char *v, char *why, size_t cap)
{
    const char *colon = strrchr(v, ':');
    long long port;
    return (colon != NULL && colon != v && whole(colon + 1, 1, 65535, &port)) ||
           refuse(why, cap, "%s '%s' is not HOST:PORT", label, v);
}

typedef struct option {
    const char *name;    /* "--timeout" */
    const char *metavar; /* "SECONDS"; NULL: a flag, it takes no value */
    const char *help;
    check_fn check; /* NULL: any value */
    int max;        /* how often it may be given (0: once) */
    int needs;      /* an option without which it means nothing, or O_NONE */
    int excludes;   /* an option it contradicts, or O_NONE */
} option;

static const option options[O_COUNT] = {
    [O_CONTROLLER] = {.name = "--controller",
                      .metavar = "URL",
                      .help =
                          "controller API; repeat for each (tried in turn when one fails); "
                          "env POPCAST_CONTROLLER (comma-separated), default " DEFAULT_CONTROLLER,
                      .check = check_url,
                      .max = MAX_CONTROLLERS},
    [O_TOKEN] = {.name = "--token",
                 .metavar = "TOKEN",
                 .help = "API token (env POPCAST_TOKEN)",
                 .check = check_nonempty},
    [O_TOKEN_FILE] = {.name = "--token-file",
                      .metavar = "FILE",
                      .help = "file holding the API token (env POPCAST_TOKEN_FILE)",
                      .check = check_file},
    [O_CA_FILE] = {.name = "--ca-file",
                   .metavar = "FILE",
                   .help = "https: the CA to trust (env POPCAST_CA_FILE)",
                   .check = check_file},
    [O_TLS_SERVER_NAME] = {.name = "--tls-server-name",
                           .metavar = "NAME",
                           .help = "https: the name the controller's certificate must carry (env "
                                   "POPCAST_TLS_SERVER_NAME)",
                           .check = check_nonempty},
    [O_JSON] = {.name = "--json",
                .metavar = NULL,
                .help = "print JSON (the controller's answer) instead of text"},
    [O_WAIT] = {.name = "--wait",
                .metavar = NULL,
                .help = "block until the change is live on every agent (or --fraction of them), an "
                        "agent refuses it, or --timeout passes"},
    [O_RETRY_FOR] = {.name = "--retry-for",
                     .metavar = "SECONDS",
                     .help = "keep trying the controllers this long when they refuse the "
                             "connection or answer 503/429 (0 to 3600, default 20; 0: once; env "
                             "POPCAST_RETRY_FOR)",
                     .check = check_retry_for},
    [O_TIMEOUT] = {.name = "--timeout",
                   .metavar = "SECONDS",
                   .help = "with --wait: give up after SECONDS (1 to 86400, default 60)",
                   .check = check_timeout,
                   .needs = O_WAIT},
    [O_FRACTION] = {.name = "--fraction",
                    .metavar = "F",
                    .help =
                        "with --wait: live on this fraction of the agents is enough (0 < F <= 1, "
                        "default 1)",
                    .check = check_fraction,
                    .needs = O_WAIT},
    [O_ENTRYPOINT] = {.name = "--entrypoint",
                      .metavar = "FILE",
                      .help =
                          "the file the runtime starts from (default: main.lua in a directory, the "
                          "file's own name for a file)",
                      .check = check_entrypoint},
    [O_RUNTIME] = {.name = "--runtime",
                   .metavar = "NAME",
                   .help = "the runtime that runs it (default lua)",
                   .check = check_runtime},
    [O_OUT] = {.name = "--out",
               .metavar = "DIR",
               .help = "write the key files into DIR (default .)",
               .check = check_out_dir},
    [O_KEY_NAME] = {.name = "--name",
                    .metavar = "NAME",
                    .help = "the key files' name (default popcast-signing)",
                    .check = check_key_name},
    [O_TENANT] = {.name = "--tenant",
                  .metavar = "TENANT",
                  .help = "a tenant the token may act on (repeat: at most 16)",
                  .check = check_tenant,
                  .max = MAX_TENANTS},
    [O_TOKEN_NAME] = {.name = "--name",
                      .metavar = "NAME",
                      .help = "a label for the token (1 to 64 of A-Z, a-z, 0-9, '.', '_', '-')",
                      .check = check_token_name},
    [O_ROOT_KEY] = {.name = "--root-key",
                    .metavar = "ROOT_PUBKEY_FILE",
                    .help =
                        "sign the rotation with this root key, held by the controller (emergency)",
                    .check = check_file,
                    .excludes = O_AUTHORIZATION},
    [O_AUTHORIZATION] = {.name = "--authorization",
                         .metavar = "FILE",
                         .help =
                             "carry a root's offline authorization (from `popcast key authorize`)",
                         .check = check_file,
                         .excludes = O_ROOT_KEY},
    [O_IDEMPOTENCY_KEY] = {.name = "--idempotency-key",
                           .metavar = "KEY",
                           .help = "the write's idempotency key, sent on every try (1 to 64 of "
                                   "A-Z, a-z, 0-9, '.', '_', ':', '-'; default: a new random one "
                                   "per run); running again with the same key and request is "
                                   "answered with what the first run made, never a second change",
                           .check = check_idempotency_key},
    [O_BASELINE] = {.name = "--baseline",
                    .metavar = "VERSION",
                    .help = "compare with this version (default: the newest earlier one with "
                            "content)",
                    .check = check_version},
    [O_FROM] = {.name = "--from",
                .metavar = "SEQ",
                .help = "every entry after this seq, then what happens (default: from now)",
                .check = check_from},
    [O_EVENTS] = {.name = "--count",
                  .metavar = "N",
                  .help = "exit (0) after N events (1 to 1000000000)",
                  .check = check_min_requests},
    [O_MIN_REQUESTS] = {.name = "--min-requests",
                        .metavar = "N",
                        .help = "requests the version needs before a verdict (1 to 1000000000, "
                                "default 100)",
                        .check = check_min_requests},
    [O_MESSAGE] = {.name = "--message",
                   .metavar = "TEXT",
                   .help = "why: kept with the version, signed, shown by `popcast versions` (at "
                           "most 512 bytes of UTF-8, no control characters)",
                   .check = check_message},
    [O_POP] = {.name = "--pop",
               .metavar = "POP",
               .help = "make it live on this PoP's agents (repeat: at most 64)",
               .check = check_id,
               .max = PC_TARGET_MAX_NAMES},
    [O_AGENT] = {.name = "--agent",
                 .metavar = "ID",
                 .help = "make it live on this agent (repeat: at most 64)",
                 .check = check_id,
                 .max = PC_TARGET_MAX_NAMES},
    [O_PERMILLE] = {.name = "--permille",
                    .metavar = "N",
                    .help = "make it live on N per mille of all agents, chosen by a hash of the "
                            "tenant, version and agent id (0 to 1000; a larger N names a "
                            "superset)",
                    .check = check_permille},
    [O_EVERYONE] = {.name = "--everyone", .metavar = NULL, .help = "make it live on every agent"},
    [O_STAGED] = {.name = "--staged",
                  .metavar = NULL,
                  .help = "the default, spelled out: a staged deployment with the default plan "
                          "(canary PoP, 10 %, 50 %, everyone; each stage gated and baked)",
                  .excludes = O_IMMEDIATE},
    [O_NO_DEPLOYMENT] =
        {.name = "--direct",
         .metavar = NULL,
         .help = "no deployment: one entry, live at once on every agent (or where --pop, "
                 "--agent, --permille name), no gate, no record; --wait follows its "
                 "rollout"},
    [O_PLAN] = {.name = "--plan",
                .metavar = "FILE",
                .help = "a staged deployment with this plan: a JSON array of stages "
                        "(docs/deployments.md)",
                .check = check_plan_file,
                .excludes = O_IMMEDIATE},
    [O_IMMEDIATE] = {.name = "--immediate",
                     .metavar = NULL,
                     .help = "a deployment of one stage, every agent at once, no gate: recorded "
                             "as such"},
    [O_SPLIT] = {.name = "--split",
                 .metavar = "N",
                 .help = "on the agents named, run the version for N per mille of the requests (1 "
                         "to 999; the rest keep the version they served), sticky by --split-key",
                 .check = check_split,
                 .needs = O_SPLIT_KEY},
    [O_SPLIT_KEY] = {.name = "--split-key",
                     .metavar = "KEY",
                     .help = "what keeps a client on one side of a split: a request header "
                             "(x-user-id) or cookie:NAME",
                     .check = check_split_key,
                     .needs = O_SPLIT},
    [O_REPLACES] = {.name = "--replaces",
                    .metavar = "KEY_ID",
                    .help =
                        "the signing key being replaced (16 hex digits, from `popcast key list`)",
                    .check = check_key_id},
};

/* Shells the completion script is written for. */
static bool check_shell(const char *label, const char *v, char *why, size_t cap)
{
    return strcmp(v, "bash") == 0 || strcmp(v, "zsh") == 0 ||
           refuse(why, cap, "%s must be bash or zsh, not '%s'", label, v);
}

static int cmd_completion(cli *c);

typedef struct argument {
    const char *name; /* "TENANT"; NULL ends the list */
    check_fn check;   /* NULL: any value */
} argument;

struct command {
    const char *name, *sub; /* "key", "rotate"; sub NULL: a command of one word */
    const char *summary;
    argument args[MAX_ARGS];
    int optional;    /* how many of the last args may be left out */
    const int *opts; /* the options it accepts besides the connection options (| REQUIRED:
                        it needs that one); O_NONE ends */
    bool offline;    /* contacts no controller */
    int (*run)(cli *);
};

#define REQUIRED  0x100
#define OPT_ID(o) ((o) & ~REQUIRED)
#define WAIT_OPTS O_WAIT, O_TIMEOUT, O_FRACTION
#define OPTS(...) ((const int[]){__VA_ARGS__, O_NONE})

/* Macros, not const objects: a static table may only hold constants. */
#define TENANT_ARG                                                                                 \
    {                                                                                              \
        "TENANT", check_tenant                                                                     \
    }
#define VERSION_ARG                                                                                \
    {                                                                                              \
        "VERSION", check_version                                                                   \
    }

static const command commands[] = {
    {"keygen",
     NULL,
     "write NAME.key (secret, 0600) and NAME.pub",
     {{0}},
     0,
     OPTS(O_OUT, O_KEY_NAME, O_JSON),
     true,
     cmd_keygen},
    {"deploy",
     NULL,
     "upload a file or directory as a new version and roll it out through a staged deployment "
     "(the default plan, --plan FILE or --immediate; or --direct: no deployment), or roll out a "
     "stored VERSION (none: the active one, e.g. an upload)",
     {TENANT_ARG, {"PATH|VERSION", check_deploy_what}},
     1,
     OPTS(O_ENTRYPOINT, O_RUNTIME, O_MESSAGE, O_IDEMPOTENCY_KEY, O_STAGED, O_PLAN, O_IMMEDIATE,
          O_NO_DEPLOYMENT, O_POP, O_AGENT, O_PERMILLE, WAIT_OPTS, O_JSON),
     false,
     cmd_deploy},
    {"upload",
     NULL,
     "store a file or directory as a new version, live nowhere until staged",
     {TENANT_ARG, {"PATH", check_bundle_path}},
     0,
     OPTS(O_ENTRYPOINT, O_RUNTIME, O_MESSAGE, O_IDEMPOTENCY_KEY, O_JSON),
     false,
     cmd_upload},
    {"deployments",
     "start",
     "start a staged deployment of VERSION (default: the active one): the default plan, --plan "
     "FILE, or --immediate",
     {TENANT_ARG, VERSION_ARG},
     1,
     OPTS(O_PLAN, O_IMMEDIATE, O_MESSAGE, O_WAIT, O_TIMEOUT, O_JSON),
     false,
     cmd_deployments_start},
    {"deployments",
     "list",
     "a tenant's deployments and how each ended",
     {TENANT_ARG},
     0,
     OPTS(O_JSON),
     false,
     cmd_deployments_list},
    {"deployments",
     "show",
     "one deployment: plan, stage, history",
     {TENANT_ARG, {"ID", check_version}},
     0,
     OPTS(O_JSON),
     false,
     cmd_deployments_show},
    {"deployments",
     "watch",
     "follow a deployment until it is over (exit 0 complete, 8 reverted, 6 superseded)",
     {TENANT_ARG, {"ID", check_version}},
     0,
     OPTS(O_JSON),
     false,
     cmd_deployments_watch},
    {"deployments",
     "pause",
     "stop judging and moving a running deployment",
     {TENANT_ARG, {"ID", check_version}},
     0,
     OPTS(O_JSON),
     false,
     cmd_deployments_pause},
    {"deployments",
     "resume",
     "let a paused deployment go on",
     {TENANT_ARG, {"ID", check_version}},
     0,
     OPTS(O_JSON),
     false,
     cmd_deployments_resume},
    {"deployments",
     "abort",
     "halt a deployment and revert it to its baseline",
     {TENANT_ARG, {"ID", check_version}},
     0,
     OPTS(O_JSON),
     false,
     cmd_deployments_abort},
    {"deployments",
     "promote",
     "pass the current stage now, without its bake or gate",
     {TENANT_ARG, {"ID", check_version}},
     0,
     OPTS(O_JSON),
     false,
     cmd_deployments_promote},
    {"plan",
     "show",
     "the plan a deployment of TENANT follows when given none: its own, or the controllers'",
     {TENANT_ARG},
     0,
     OPTS(O_JSON),
     false,
     cmd_plan_show},
    {"plan",
     "set",
     "give TENANT a default plan of its own: FILE is a JSON array of stages "
     "(docs/deployments.md)",
     {TENANT_ARG, {"FILE", check_plan_file}},
     0,
     OPTS(O_JSON),
     false,
     cmd_plan_set},
    {"plan",
     "clear",
     "TENANT goes back to the controllers' default plan",
     {TENANT_ARG},
     0,
     OPTS(O_JSON),
     false,
     cmd_plan_clear},
    {"stage",
     NULL,
     "make the active VERSION live on more agents (--pop, --agent, --permille, --everyone)",
     {TENANT_ARG, VERSION_ARG},
     0,
     OPTS(O_POP, O_AGENT, O_PERMILLE, O_EVERYONE, O_SPLIT, O_SPLIT_KEY, O_MESSAGE,
          O_IDEMPOTENCY_KEY, WAIT_OPTS, O_JSON),
     false,
     cmd_stage},
    {"versions",
     NULL,
     "list a tenant's versions",
     {TENANT_ARG},
     0,
     OPTS(O_JSON),
     false,
     cmd_versions},
    {"rollback",
     NULL,
     "make VERSION's content the new version (default: the last version proven live "
     "everywhere)",
     {TENANT_ARG, VERSION_ARG},
     1,
     OPTS(O_MESSAGE, O_IDEMPOTENCY_KEY, WAIT_OPTS, O_JSON),
     false,
     cmd_rollback},
    {"delete",
     NULL,
     "stop serving a tenant",
     {TENANT_ARG},
     0,
     OPTS(O_MESSAGE, O_IDEMPOTENCY_KEY, WAIT_OPTS, O_JSON),
     false,
     cmd_delete},
    {"watch",
     NULL,
     "follow what happens, as it happens: committed entries (from --from), deployments, agents' "
     "rollout progress; one tenant's only with TENANT",
     {TENANT_ARG},
     1,
     OPTS(O_FROM, O_EVENTS, O_JSON),
     false,
     cmd_watch},
    {"tail",
     NULL,
     "follow a tenant's log lines from every agent: its handlers' print output, failed "
     "requests' errors, sampled request lines",
     {TENANT_ARG},
     0,
     OPTS(O_EVENTS, O_JSON),
     false,
     cmd_tail},
    {"status",
     NULL,
     "tenants, or one tenant's state: requested vs serving",
     {TENANT_ARG},
     1,
     OPTS(O_JSON),
     false,
     cmd_status},
    {"rollout",
     NULL,
     "where a version is live, per agent and PoP",
     {TENANT_ARG, VERSION_ARG},
     0,
     OPTS(WAIT_OPTS, O_JSON),
     false,
     cmd_rollout},
    {"health",
     NULL,
     "judge a version by its error and limit-kill rates against the one before it",
     {TENANT_ARG, VERSION_ARG},
     0,
     OPTS(O_BASELINE, O_MIN_REQUESTS, O_JSON),
     false,
     cmd_health},
    {"fleet",
     NULL,
     "agents, their lag, staleness, last report",
     {{0}},
     0,
     OPTS(O_JSON),
     false,
     cmd_fleet},
    {"cluster",
     NULL,
     "controllers: roles, term, commit and applied index",
     {{0}},
     0,
     OPTS(O_JSON),
     false,
     cmd_cluster},
    {"cluster",
     "add",
     "add a controller (started with --raft-join)",
     {{"ID", check_node_id}, {"RAFT_ADDR", check_host_port}, {"API_URL", check_url}},
     0,
     OPTS(O_JSON),
     false,
     cmd_cluster_add},
    {"cluster",
     "remove",
     "remove a controller from the cluster",
     {{"ID", check_node_id}},
     0,
     OPTS(O_JSON),
     false,
     cmd_cluster_remove},
    {"token",
     "create",
     "a token scoped to tenants",
     {{0}},
     0,
     OPTS(O_TENANT | REQUIRED, O_TOKEN_NAME, O_JSON),
     false,
     cmd_token_create},
    {"token", "list", "scoped tokens", {{0}}, 0, OPTS(O_JSON), false, cmd_token_list},
    {"token",
     "revoke",
     "refuse a token from now on",
     {{"ID", check_token_id}},
     0,
     OPTS(O_JSON),
     false,
     cmd_token_revoke},
    {"agent",
     "enroll",
     "trust an agent's signed reports",
     {{"ID", check_id}, {"PUBKEY_FILE", check_file}},
     0,
     OPTS(O_JSON),
     false,
     cmd_agent_enroll},
    {"agent", "list", "enrolled agents", {{0}}, 0, OPTS(O_JSON), false, cmd_agent_list},
    {"agent",
     "revoke",
     "refuse an agent's reports from now on",
     {{"ID", check_id}},
     0,
     OPTS(O_JSON),
     false,
     cmd_agent_revoke},
    {"key",
     "list",
     "signing keys: current, roots, rotations",
     {{0}},
     0,
     OPTS(O_JSON),
     false,
     cmd_key_list},
    {"key",
     "rotate",
     "make NEXT the signing key from the next seq",
     {{"NEXT_PUBKEY_FILE", check_file}},
     0,
     OPTS(O_ROOT_KEY, O_AUTHORIZATION, O_JSON),
     false,
     cmd_key_rotate},
    {"key",
     "authorize",
     "offline: print a root's authorization to replace KEY_ID by NEXT",
     {{"ROOT_SECRET_KEY_FILE", check_file}, {"NEXT_PUBKEY_FILE", check_file}},
     0,
     OPTS(O_REPLACES | REQUIRED),
     true,
     cmd_key_authorize},
    {"completion",
     NULL,
     "print the shell completion script (bash or zsh)",
     {{"SHELL", check_shell}},
     0,
     OPTS(O_NONE),
     true,
     cmd_completion},
};
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

/* The script: the shell asks `popcast __complete WORDS...` (the words
 * after popcast, the one being completed last), which answers from the
 * same tables the parser uses; no candidate falls back to file names. */
static const char bash_script[] =
    "# popcast completion for bash: popcast completion bash > "
    "/etc/bash_completion.d/popcast\n"
    "_popcast() {\n"
    "    local IFS=$'\\n'\n"
    "    COMPREPLY=($(\"${COMP_WORDS[0]}\" __complete \"${COMP_WORDS[@]:1:COMP_CWORD}\" "
    "2>/dev/null))\n"
    "}\n"
    "complete -o default -F _popcast popcast\n";

/* The same for zsh: loaded from $fpath (autoload: the file is the
 * function's body) or sourced (it registers itself). */
static const char zsh_script[] =
    "#compdef popcast\n"
    "# popcast completion for zsh: popcast completion zsh > \"${fpath[1]}/_popcast\"\n"
    "# (or, after compinit in .zshrc: source <(popcast completion zsh))\n"
    "_popcast() {\n"
    "    local -a candidates\n"
    "    candidates=(${(f)\"$(\"${words[1]}\" __complete \"${(@)words[2,CURRENT]}\" "
    "2>/dev/null)\"})\n"
    "    if (( ${#candidates} )); then\n"
    "        compadd -Q -a candidates\n"
    "    else\n"
    "        _files\n"
    "    fi\n"
    "}\n"
    "if [[ ${funcstack[1]} == _popcast ]]; then\n"
    "    _popcast \"$@\"\n"
    "else\n"
    "    compdef _popcast popcast\n"
    "fi\n";

static int cmd_completion(cli *c)
{
    fputs(strcmp(c->args[0], "zsh") == 0 ? zsh_script : bash_script, stdout);
    return 0;
}

static bool accepts(const command *k, int id);

static void candidate(const char *word, const char *prefix)
{
    if (strncmp(word, prefix, strlen(prefix)) == 0)
        printf("%s\n", word);
}

/* popcast __complete WORD... : the words that can come in place of the
 * last one (one per line), given the ones before it. Prints nothing
 * where a file name or a free value goes. */
static int complete_words(int n, char **words)
{
    const char *cur = n > 0 ? words[n - 1] : "";
    if (n <= 1) {
        for (size_t i = 0; i < N_COMMANDS; i++)
            if (i == 0 || strcmp(commands[i].name, commands[i - 1].name) != 0)
                candidate(commands[i].name, cur);
        candidate("help", cur);
        candidate("--help", cur);
        candidate("--version", cur);
        return 0;
    }
    /* The command: NAME SUB when the second word is one of NAME's subs. */
    const command *k = NULL;
    bool has_subs = false;
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(commands[i].name, words[0]) != 0)
            continue;
        if (commands[i].sub == NULL && k == NULL)
            k = &commands[i];
        if (commands[i].sub != NULL) {
            has_subs = true;
            if (n > 2 && strcmp(commands[i].sub, words[1]) == 0)
                k = &commands[i];
        }
    }
    if (n == 2 && has_subs && cur[0] != '-')
        for (size_t i = 0; i < N_COMMANDS; i++)
            if (strcmp(commands[i].name, words[0]) == 0 && commands[i].sub != NULL)
                candidate(commands[i].sub, cur);
    if (k == NULL)
        return 0;
    /* After an option that takes a value: the value (shells only). */
    if (n >= 2 && words[n - 2][0] == '-') {
        for (int id = O_NONE + 1; id < O_COUNT; id++)
            if (strcmp(options[id].name, words[n - 2]) == 0 && options[id].metavar != NULL)
                return 0;
    }
    if (cur[0] == '-') {
        for (int id = O_NONE + 1; id < O_COUNT; id++)
            if (accepts(k, id))
                candidate(options[id].name, cur);
        candidate("--help", cur);
        return 0;
    }
    if (k->run == cmd_completion) {
        candidate("bash", cur);
        candidate("zsh", cur);
    }
    return 0;
}

static int n_args(const command *k)
{
    int n = 0;
    while (n < MAX_ARGS && k->args[n].name != NULL)
        n++;
    return n;
}

static bool accepts(const command *k, int id)
{
    if (id <= O_LAST_CONNECTION)
        return true;
    for (const int *o = k->opts; *o != O_NONE; o++)
        if (OPT_ID(*o) == id)
            return true;
    return false;
}

/* The option named name that k accepts, or O_NONE; *elsewhere says
 * whether another command accepts an option of that name. */
static int find_option(const command *k, const char *name, bool *elsewhere)
{
    *elsewhere = false;
    for (int id = O_NONE + 1; id < O_COUNT; id++) {
        if (strcmp(options[id].name, name) != 0)
            continue;
        if (accepts(k, id))
            return id;
        *elsewhere = true;
    }
    return O_NONE;
}

static const char *const exit_codes =
    "exit status: 0 done, 1 the request failed, 2 wrong command line (nothing sent),\n"
    "  with --wait: 3 an agent refused (nacked) it, 4 timed out, 5 no agents to wait for,\n"
    "  6 unreachable (agents got a newer version or a delete first);\n"
    "  7 a write was sent and no answer came (it may or may not be done; a deploy,\n"
    "  rollback or delete run again within 24 h with the --idempotency-key it names\n"
    "  is done once); health: 8 the version failed the gate, 9 too few requests yet\n";

/* "key authorize ROOT_SECRET_KEY_FILE NEXT_PUBKEY_FILE --replaces KEY_ID":
 * the words, the arguments and the options it cannot do without. */
static void synopsis(const command *k, char *out, size_t cap)
{
    size_t used =
        (size_t)snprintf(out, cap, "%s%s%s", k->name, k->sub ? " " : "", k->sub ? k->sub : "");
    int n = n_args(k);
    for (int i = 0; i < n && used < cap; i++)
        used += (size_t)snprintf(out + used, cap - used, i >= n - k->optional ? " [%s]" : " %s",
                                 k->args[i].name);
    for (const int *o = k->opts; *o != O_NONE && used < cap; o++)
        if (*o & REQUIRED)
            used += (size_t)snprintf(out + used, cap - used, " %s %s", options[OPT_ID(*o)].name,
                                     options[OPT_ID(*o)].metavar);
}

/* Prints text from column indent, wrapped at 100 columns (the first line
 * continues a line already at column indent). */
static void print_wrapped(FILE *f, int indent, const char *text)
{
    int col = indent;
    while (*text != '\0') {
        size_t word = strcspn(text, " ");
        if (col > indent && col + 1 + (int)word > 100) {
            fprintf(f, "\n%*s", indent, "");
            col = indent;
        } else if (col > indent) {
            fputc(' ', f);
            col++;
        }
        fprintf(f, "%.*s", (int)word, text);
        col += (int)word;
        text += word;
        text += strspn(text, " ");
    }
    fputc('\n', f);
}

static void print_option(FILE *f, int id)
{
    const option *o = &options[id];
    char left[64];
    snprintf(left, sizeof(left), "%s%s%s", o->name, o->metavar ? " " : "",
             o->metavar ? o->metavar : "");
    if (strlen(left) > 22)
        fprintf(f, "  %s\n%25s", left, "");
    else
        fprintf(f, "  %-22s ", left);
    print_wrapped(f, 25, o->help);
}

static void print_connection_options(FILE *f)
{
    for (int id = O_NONE + 1; id <= O_LAST_CONNECTION; id++)
        print_option(f, id);
}

/* `popcast CMD [SUB] --help`: one command's usage. */
static void command_help(FILE *f, const command *k)
{
    char words[160];
    synopsis(k, words, sizeof(words));
    fprintf(f, "usage: popcast %s [options]\n\n%s\n", words, k->summary);
    if (k->opts[0] != O_NONE) {
        fprintf(f, "\noptions:\n");
        for (const int *o = k->opts; *o != O_NONE; o++)
            print_option(f, OPT_ID(*o));
    }
    if (k->offline) {
        fprintf(f, "\nneeds no controller (the connection options are accepted and unused)\n");
    } else {
        fprintf(f, "\nconnection options:\n");
        print_connection_options(f);
    }
}

/* Help for every command named name (a group such as `key`); false if
 * there is none. */
static bool group_help(FILE *f, const char *name)
{
    bool first = true;
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(commands[i].name, name) != 0)
            continue;
        if (!first)
            fprintf(f, "\n");
        command_help(f, &commands[i]);
        first = false;
    }
    return !first;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: popcast COMMAND [ARGUMENTS] [options]\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++) {
        const command *k = &commands[i];
        char left[160];
        synopsis(k, left, sizeof(left));
        if (strlen(left) > 34)
            fprintf(f, "  %s\n%37s", left, "");
        else
            fprintf(f, "  %-34s ", left);
        print_wrapped(f, 37, k->summary);
    }
    fprintf(f, "\nconnection options (every command):\n");
    print_connection_options(f);
    fprintf(f, "\n'popcast COMMAND --help' shows a command's options.\n%s", exit_codes);
}

/* Prints a usage error about command k (or the group name, if k is
 * NULL): one line, then where to look. Returns RC_USAGE. */
__attribute__((format(printf, 3, 4))) static int usage_error(const command *k, const char *group,
                                                             const char *fmt, ...)
{
    char who[64];
    if (k != NULL)
        snprintf(who, sizeof(who), "popcast %s%s%s", k->name, k->sub ? " " : "",
                 k->sub ? k->sub : "");
    else
        snprintf(who, sizeof(who), "popcast%s%s", group ? " " : "", group ? group : "");
    fprintf(stderr, "%s: ", who);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nsee '%s --help'\n", who);
    return RC_USAGE;
}

/* An argument that names an option (as opposed to a value such as -1). */
static bool is_option(const char *a)
{
    return a[0] == '-' && a[1] != '\0' && !(a[1] >= '0' && a[1] <= '9');
}

static void store(cli *c, int id, const char *value)
{
    switch (id) {
    case O_CONTROLLER:
        if (c->n_controllers < MAX_CONTROLLERS)
            c->controllers[c->n_controllers++] = value;
        break;
    case O_TOKEN: c->token = value; break;
    case O_TOKEN_FILE: c->token_file = value; break;
    case O_CA_FILE: c->ca_file = value; break;
    case O_TLS_SERVER_NAME: c->tls_server_name = value; break;
    case O_JSON: c->json = true; break;
    case O_WAIT: c->wait = true; break;
    case O_TIMEOUT: whole(value, 1, 86400, &c->timeout_s); break;
    case O_RETRY_FOR: whole(value, 0, 3600, &c->retry_for_s); break;
    case O_FRACTION: fraction_of(value, &c->fraction); break;
    case O_ENTRYPOINT: c->entrypoint = value; break;
    case O_RUNTIME: c->runtime = value; break;
    case O_OUT: c->out_dir = value; break;
    case O_KEY_NAME:
    case O_TOKEN_NAME: c->name = value; break;
    case O_TENANT: c->tenants[c->n_tenants++] = value; break;
    case O_ROOT_KEY: c->root_key = value; break;
    case O_AUTHORIZATION: c->authorization = value; break;
    case O_REPLACES: c->replaces = value; break;
    case O_IDEMPOTENCY_KEY:
        snprintf(c->idempotency_key, sizeof(c->idempotency_key), "%s", value);
        break;
    case O_MESSAGE: c->message = value; break;
    case O_BASELINE: whole(value, 1, LLONG_MAX, &c->baseline); break;
    case O_MIN_REQUESTS: whole(value, 1, 1000000000, &c->min_requests); break;
    case O_FROM: whole(value, 0, LLONG_MAX, &c->from); break;
    case O_EVENTS: whole(value, 1, 1000000000, &c->events); break;
    case O_POP: c->pops[c->n_pops++] = value; break;
    case O_AGENT: c->agents[c->n_agents++] = value; break;
    case O_PERMILLE: whole(value, 0, PC_TARGET_EVERYONE, &c->permille); break;
    case O_EVERYONE: c->everyone = true; break;
    case O_STAGED: c->staged = true; break;
    case O_PLAN: c->plan_file = value; break;
    case O_IMMEDIATE: c->immediate = true; break;
    case O_NO_DEPLOYMENT: c->direct = true; break;
    case O_SPLIT: whole(value, 1, 999, &c->split); break;
    case O_SPLIT_KEY: c->split_key = value; break;
    default: break;
    }
}

/* Parses argv[first..] as the arguments and options of command k into c.
 * Returns 0, or RC_USAGE after saying what is wrong. */
static int parse(cli *c, const command *k, int argc, char **argv, int first)
{
    int max_args = n_args(k);
    bool options_end = false;
    char why[512];
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (!options_end && strcmp(a, "--") == 0) {
            options_end = true;
            continue;
        }
        if (options_end || !is_option(a)) {
            if (c->nargs == max_args)
                return usage_error(k, NULL, "unexpected argument '%s'", a);
            check_fn check = k->args[c->nargs].check;
            if (check != NULL && !check(k->args[c->nargs].name, a, why, sizeof(why)))
                return usage_error(k, NULL, "%s", why);
            c->args[c->nargs++] = a;
            continue;
        }
        /* --name VALUE or --name=VALUE */
        char name[48];
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        if (len >= sizeof(name))
            return usage_error(k, NULL, "unknown option %.*s", 40, a);
        memcpy(name, a, len);
        name[len] = '\0';
        bool elsewhere;
        int id = find_option(k, name, &elsewhere);
        if (id == O_NONE && elsewhere)
            return usage_error(k, NULL, "%s is not an option of %s%s%s", name, k->name,
                               k->sub ? " " : "", k->sub ? k->sub : "");
        if (id == O_NONE)
            return usage_error(k, NULL, "unknown option %s", name);
        const option *o = &options[id];
        const char *value = "";
        if (o->metavar == NULL) {
            if (eq != NULL)
                return usage_error(k, NULL, "%s takes no value", name);
        } else if (eq != NULL) {
            value = eq + 1;
        } else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
            value = argv[++i];
        } else {
            return usage_error(k, NULL, "%s needs a value (%s)", name, o->metavar);
        }
        if (c->given[id] >= (o->max > 0 ? o->max : 1))
            return o->max > 1 ? usage_error(k, NULL, "%s is given more than %d times", name, o->max)
                              : usage_error(k, NULL, "%s is given twice", name);
        if (o->check != NULL && !o->check(name, value, why, sizeof(why)))
            return usage_error(k, NULL, "%s", why);
        for (int t = 0; id == O_TENANT && t < c->n_tenants; t++)
            if (strcmp(c->tenants[t], value) == 0)
                return usage_error(k, NULL, "%s %s is given twice", name, value);
        c->given[id]++;
        store(c, id, value);
    }
    if (c->nargs < max_args - k->optional)
        return usage_error(k, NULL, "missing %s", k->args[c->nargs].name);
    for (const int *o = k->opts; *o != O_NONE; o++)
        if ((*o & REQUIRED) && c->given[OPT_ID(*o)] == 0)
            return usage_error(k, NULL, "missing %s %s", options[OPT_ID(*o)].name,
                               options[OPT_ID(*o)].metavar);
    for (int id = O_NONE + 1; id < O_COUNT; id++) {
        const option *o = &options[id];
        if (c->given[id] == 0)
            continue;
        if (o->needs != O_NONE && c->given[o->needs] == 0)
            return usage_error(k, NULL, "%s only applies with %s", o->name, options[o->needs].name);
        if (o->excludes != O_NONE && c->given[o->excludes] != 0)
            return usage_error(k, NULL, "give %s or %s, not both", o->name,
                               options[o->excludes].name);
    }
    /* deploy: through a deployment (the default), or --direct, not both;
     * a target and a rollout wait's fraction are --direct's; a stored
     * VERSION always goes through a deployment. */
    bool version_arg = k->run == cmd_deploy && (c->nargs < 2 || is_version_arg(c->args[1]));
    if (version_arg &&
        (c->given[O_ENTRYPOINT] + c->given[O_RUNTIME] + c->given[O_IDEMPOTENCY_KEY]) != 0)
        return usage_error(k, NULL,
                           "--entrypoint, --runtime and --idempotency-key go with an upload "
                           "(PATH), not a stored version");
    if (c->given[O_NO_DEPLOYMENT] != 0 &&
        (c->given[O_STAGED] + c->given[O_PLAN] + c->given[O_IMMEDIATE] + version_arg) != 0)
        return usage_error(k, NULL,
                           version_arg ? "a stored VERSION goes out through a deployment, not "
                                         "--direct"
                                       : "--direct is no deployment: give it without --staged, "
                                         "--plan, --immediate");
    if (k->run == cmd_deploy && c->given[O_NO_DEPLOYMENT] == 0 &&
        (c->given[O_POP] + c->given[O_AGENT] + c->given[O_PERMILLE]) != 0)
        return usage_error(k, NULL,
                           "--pop, --agent and --permille target one --direct entry; a "
                           "deployment's stages are in its --plan");
    if (k->run == cmd_deploy && c->given[O_NO_DEPLOYMENT] == 0 && c->given[O_FRACTION] != 0)
        return usage_error(k, NULL,
                           "--fraction is for --direct's rollout wait; a deployment's --wait "
                           "follows its stages");
    if (c->given[O_STAGED] != 0 && c->given[O_PLAN] != 0)
        return usage_error(k, NULL, "give --staged (the default plan) or --plan FILE, not both");
    /* stage: where to, one way or the other. */
    if (k->run == cmd_stage &&
        (c->given[O_EVERYONE] != 0) ==
            (c->given[O_POP] + c->given[O_AGENT] + c->given[O_PERMILLE] != 0))
        return usage_error(k, NULL, "give --everyone, or any of --pop, --agent, --permille");
    /* health: a baseline is an earlier version than the one judged. */
    if (c->given[O_BASELINE] != 0 && c->nargs > 1 && c->baseline >= strtoll(c->args[1], NULL, 10))
        return usage_error(k, NULL, "--baseline %lld is not below VERSION %s", c->baseline,
                           c->args[1]);
    return 0;
}

/* What the environment gives for an option not on the command line,
 * checked as the option would be. */
static int from_env(cli *c, int id, const char *var, const char **slot)
{
    char why[512];
    const char *v = getenv(var);
    if (c->given[id] != 0 || v == NULL)
        return 0;
    if (options[id].check != NULL && !options[id].check(var, v, why, sizeof(why)))
        return usage_error(c->cmd, NULL, "%s", why);
    *slot = v;
    return 0;
}

/* The controller, its TLS settings and the token of a command that
 * contacts a controller, from the options or the environment; all checked
 * (and the token file read) before any request. */
static int connection(cli *c)
{
    int rc;
    if ((rc = from_env(c, O_CA_FILE, "POPCAST_CA_FILE", &c->ca_file)) != 0 ||
        (rc = from_env(c, O_TLS_SERVER_NAME, "POPCAST_TLS_SERVER_NAME", &c->tls_server_name)) != 0)
        return rc;
    const char *retry = getenv("POPCAST_RETRY_FOR");
    if (c->given[O_RETRY_FOR] == 0 && retry != NULL) {
        char why[512];
        if (!check_retry_for("POPCAST_RETRY_FOR", retry, why, sizeof(why)))
            return usage_error(c->cmd, NULL, "%s", why);
        whole(retry, 0, 3600, &c->retry_for_s);
    }
    const char *env = getenv("POPCAST_CONTROLLER");
    if (c->n_controllers == 0 && env != NULL) {
        /* A comma-separated list, each checked like a --controller. */
        if (strlen(env) >= sizeof(c->env_controllers))
            return usage_error(c->cmd, NULL, "POPCAST_CONTROLLER is too long");
        snprintf(c->env_controllers, sizeof(c->env_controllers), "%s", env);
        char *save = NULL;
        for (char *u = strtok_r(c->env_controllers, ",", &save); u != NULL;
             u = strtok_r(NULL, ",", &save)) {
            char why[512];
            if (c->n_controllers == MAX_CONTROLLERS)
                return usage_error(c->cmd, NULL,
                                   "POPCAST_CONTROLLER names more than %d controllers",
                                   MAX_CONTROLLERS);
            if (!check_url("POPCAST_CONTROLLER", u, why, sizeof(why)))
                return usage_error(c->cmd, NULL, "%s", why);
            c->controllers[c->n_controllers++] = u;
        }
    }
    if (c->n_controllers == 0)
        c->controllers[c->n_controllers++] = DEFAULT_CONTROLLER;
    c->controller = c->controllers[0];
    for (int i = 0; i < c->n_controllers; i++)
        if (pc_url_is_tls(c->controllers[i]) && c->ca_file == NULL)
            return usage_error(c->cmd, NULL, "%s is https: give --ca-file (or POPCAST_CA_FILE)",
                               c->controllers[i]);
    if (c->token != NULL)
        return 0;
    if ((rc = from_env(c, O_TOKEN_FILE, "POPCAST_TOKEN_FILE", &c->token_file)) != 0)
        return rc;
    if (c->token_file == NULL) {
        c->token = getenv("POPCAST_TOKEN");
        return 0;
    }
    FILE *f = fopen(c->token_file, "r");
    if (f == NULL)
        return usage_error(c->cmd, NULL, "cannot read token file %s: %s", c->token_file,
                           strerror(errno));
    if (fgets(c->token_buf, sizeof(c->token_buf), f) == NULL)
        c->token_buf[0] = '\0';
    fclose(f);
    c->token_buf[strcspn(c->token_buf, "\r\n")] = '\0';
    c->token = c->token_buf;
    return 0;
}

static bool is_help(const char *a)
{
    return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0;
}

/* The command argv[1] (and argv[2], for a command of two words) names;
 * *first: where its arguments start. NULL after a usage error. */
static const command *find_command(int argc, char **argv, int *first, int *rc)
{
    const char *name = argv[1];
    const command *plain = NULL;
    bool known = false;
    for (size_t i = 0; i < N_COMMANDS; i++) {
        const command *k = &commands[i];
        if (strcmp(k->name, name) != 0)
            continue;
        known = true;
        if (k->sub == NULL)
            plain = k;
        else if (argc > 2 && strcmp(argv[2], k->sub) == 0) {
            *first = 3;
            return k;
        }
    }
    if (plain != NULL) {
        *first = 2;
        return plain;
    }
    if (!known) {
        *rc = usage_error(NULL, NULL, "unknown command '%s'", name);
        return NULL;
    }
    char subs[128] = "";
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0) {
            size_t used = strlen(subs);
            snprintf(subs + used, sizeof(subs) - used, "%s%s", used ? ", " : "", commands[i].sub);
        }
    if (argc > 2 && is_help(argv[2])) {
        group_help(stdout, name);
        *rc = 0;
    } else if (argc > 2) {
        *rc = usage_error(NULL, name, "unknown subcommand '%s' (one of: %s)", argv[2], subs);
    } else {
        *rc = usage_error(NULL, name, "needs a subcommand: %s", subs);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* progress lines show up at once in pipes */
    if (argc < 2) {
        usage(stderr);
        return RC_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--version") == 0) {
        if (argc > 2)
            return usage_error(NULL, NULL, "--version takes no arguments");
        printf("popcast %s\n", POPCAST_VERSION);
        return 0;
    }
    if (is_help(cmd) || strcmp(cmd, "help") == 0) {
        if (argc == 2) {
            usage(stdout);
            return 0;
        }
        /* popcast help COMMAND [SUB] */
        if (argc == 3 && group_help(stdout, argv[2]))
            return 0;
        int first = 0, rc = RC_USAGE;
        const command *k = find_command(argc - 1, argv + 1, &first, &rc);
        if (k == NULL)
            return rc;
        if (first + 1 < argc)
            return usage_error(NULL, "help", "unexpected argument '%s'", argv[first + 1]);
        command_help(stdout, k);
        return 0;
    }
    if (strcmp(cmd, "__complete") == 0) /* the completion script's question */
        return complete_words(argc - 2, argv + 2);
    if (is_option(cmd))
        return usage_error(NULL, NULL, "unknown command '%s' (options follow the command)", cmd);
    int first = 0, rc = RC_USAGE;
    const command *k = find_command(argc, argv, &first, &rc);
    if (k == NULL)
        return rc;
    for (int i = first; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (is_help(argv[i])) {
            if (k->sub == NULL)
                group_help(stdout, k->name);
            else
                command_help(stdout, k);
            return 0;
        }
    }
    cli c = {
        .cmd = k, .timeout_s = WAIT_DEFAULT_S, .fraction = 1.0, .retry_for_s = RETRY_FOR_DEFAULT_S};
    if ((rc = parse(&c, k, argc, argv, first)) != 0 || (!k->offline && (rc = connection(&c)) != 0))
        return rc;
    if (pc_crypto_init() != PC_OK)
        return fail("%s", "libsodium failed to initialise");
    nng_tls_config *tls = NULL;
    if (!k->offline && c.ca_file != NULL) {
        pc_err terr;
        if (pc_tls_client_config(c.ca_file, c.tls_server_name, &tls, &terr) != PC_OK)
            return usage_error(k, NULL, "%s", terr.msg);
        pc_http_set_tls(tls);
    }
    rc = k->run(&c);
    if (rc == RC_FAILED && c.outcome_unknown)
        rc = RC_UNKNOWN;
    if (tls != NULL)
        nng_tls_config_free(tls);
    return rc;
}
