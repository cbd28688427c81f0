/* health.c - /livez and /readyz answers (see health.h). */
#include "health.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "err.h"

void pc_health_init(pc_health_report *r, const char *endpoint)
{
    memset(r, 0, sizeof(*r));
    r->endpoint = endpoint;
}

void pc_health_check(pc_health_report *r, const char *name, bool ok, const char *fmt, ...)
{
    if (r->n == PC_HEALTH_MAX_CHECKS)
        return;
    unsigned i = r->n++;
    snprintf(r->checks[i].name, sizeof(r->checks[i].name), "%s", name);
    r->checks[i].ok = ok;
    r->checks[i].detail[0] = '\0';
    if (!ok && fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->checks[i].detail, sizeof(r->checks[i].detail), fmt, ap);
        va_end(ap);
    }
}

bool pc_health_ok(const pc_health_report *r)
{
    for (unsigned i = 0; i < r->n; i++)
        if (!r->checks[i].ok)
            return false;
    return true;
}

char *pc_health_text(const pc_health_report *r, bool verbose)
{
    bool ok = pc_health_ok(r);
    if (ok && !verbose)
        return strdup("ok\n");
    size_t cap = 64 + (size_t)r->n * (PC_HEALTH_NAME_MAX + PC_HEALTH_DETAIL_MAX + 16);
    char *text = malloc(cap);
    if (text == NULL)
        return NULL;
    size_t len = 0;
    for (unsigned i = 0; i < r->n; i++) {
        if (r->checks[i].ok)
            len += (size_t)snprintf(text + len, cap - len, "[+]%s ok\n", r->checks[i].name);
        else
            len += (size_t)snprintf(text + len, cap - len, "[-]%s failed: %s\n", r->checks[i].name,
                                    r->checks[i].detail[0] ? r->checks[i].detail : "no reason");
    }
    snprintf(text + len, cap - len, "%s check %s\n", r->endpoint, ok ? "passed" : "failed");
    return text;
}

bool pc_health_excluded(const char *query, const char *name)
{
    char list[512];
    if (query == NULL || !pc_httpd_query_get(query, "exclude", list, sizeof(list)))
        return false;
    size_t n = strlen(name);
    for (const char *p = list; *p != '\0';) {
        size_t len = strcspn(p, ",");
        if (len == n && strncmp(p, name, n) == 0)
            return true;
        p += len;
        if (*p == ',')
            p++;
    }
    return false;
}

void pc_health_reply(pc_httpd_req *rq, pc_health_report *r, const char *query)
{
    /* ?verbose, ?verbose=1, ?verbose=true: any value. */
    char ignored[64];
    bool verbose = query != NULL && pc_httpd_query_get(query, "verbose", ignored, sizeof(ignored));
    for (unsigned i = 0; i < r->n; i++) {
        if (pc_health_excluded(query, r->checks[i].name)) {
            /* Kept in the listing, so that what was left out shows. */
            size_t len = strlen(r->checks[i].name);
            snprintf(r->checks[i].name + len, sizeof(r->checks[i].name) - len, " excluded:");
            r->checks[i].ok = true;
        }
    }
    char *text = pc_health_text(r, verbose);
    if (text == NULL) {
        pc_httpd_error(rq, PC_E_NOMEM, "out of memory");
        return;
    }
    pc_httpd_reply(rq, pc_health_ok(r) ? 200 : 503, "text/plain; charset=utf-8", text, strlen(text),
                   NULL);
    free(text);
}

void pc_health_loop_tick(pc_health_loop *l)
{
    atomic_store(&l->tick_ms, pc_mono_ms());
}

void pc_health_loop_stopping(pc_health_loop *l)
{
    atomic_store(&l->stopping, true);
}

void pc_health_check_loop(pc_health_report *r, pc_health_loop *l)
{
    int64_t tick = atomic_load(&l->tick_ms);
    int64_t age = pc_mono_ms() - tick;
    if (tick == 0)
        pc_health_check(r, "loop", false, "the event loop has not run yet");
    else
        pc_health_check(r, "loop", age <= PC_HEALTH_LOOP_STALL_MS,
                        "the event loop last ran %lld ms ago", (long long)age);
}

void pc_health_check_shutdown(pc_health_report *r, pc_health_loop *l)
{
    pc_health_check(r, "shutdown", !atomic_load(&l->stopping), "stopping");
}
