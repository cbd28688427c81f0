/* router.c - route tables (see router.h). */
#include "router.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* Splits s in place at '/', dropping empty segments. Returns the count,
 * or PC_ROUTE_MAX_SEGMENTS + 1 when there are more. */
static size_t split(char *s, const char **seg)
{
    size_t n = 0;
    char *save = NULL;
    for (char *t = strtok_r(s, "/", &save); t != NULL; t = strtok_r(NULL, "/", &save)) {
        if (n == PC_ROUTE_MAX_SEGMENTS)
            return PC_ROUTE_MAX_SEGMENTS + 1;
        seg[n++] = t;
    }
    return n;
}

static bool is_placeholder(const char *p, size_t len)
{
    return len >= 3 && p[0] == '{' && p[len - 1] == '}';
}

/* Whether pattern matches the n request segments; fills the placeholders
 * of m when it does. */
static bool path_matches(const char *pattern, const char *const *seg, size_t n, pc_route_match *m)
{
    size_t i = 0, params = 0;
    const char *p = pattern;
    while (*p != '\0') {
        while (*p == '/')
            p++;
        if (*p == '\0')
            break;
        size_t len = strcspn(p, "/");
        if (i == n)
            return false;
        if (is_placeholder(p, len)) {
            if (params == PC_ROUTE_MAX_SEGMENTS)
                return false;
            m->pat_[params] = p;
            m->value[params++] = seg[i];
        } else if (strlen(seg[i]) != len || memcmp(seg[i], p, len) != 0) {
            return false;
        }
        i++;
        p += len;
    }
    if (i != n)
        return false;
    m->n_params = params;
    return true;
}

static bool method_matches(const char *route, const char *method)
{
    return strcmp(route, method) == 0 || (strcmp(route, "GET") == 0 && strcmp(method, "HEAD") == 0);
}

static void allow_add(char *allow, size_t cap, const char *method)
{
    if (strstr(allow, method) != NULL)
        return;
    size_t len = strlen(allow);
    snprintf(allow + len, cap - len, "%s%s", len ? ", " : "", method);
}

int pc_route_find(const void *table, size_t n, size_t stride, const char *method,
                  const char *target, pc_route_match *out)
{
    memset(out, 0, sizeof(*out));
    out->query = "";
    if (target == NULL || target[0] != '/' || method == NULL)
        return PC_E_NOTFOUND;
    size_t len = strlen(target);
    if (len > PC_ROUTE_MAX_PATH)
        return PC_E_NOTFOUND;
    memcpy(out->buf_, target, len + 1);
    char *q = strchr(out->buf_, '?');
    if (q != NULL) {
        *q = '\0';
        out->query = q + 1;
    }
    const char *seg[PC_ROUTE_MAX_SEGMENTS];
    size_t nseg = split(out->buf_, seg);
    if (nseg > PC_ROUTE_MAX_SEGMENTS)
        return PC_E_NOTFOUND;
    bool path_found = false;
    const char *first = table;
    for (size_t i = 0; i < n; i++) {
        const pc_route *r = (const pc_route *)(const void *)(first + i * stride);
        pc_route_match m;
        if (!path_matches(r->pattern, seg, nseg, &m))
            continue;
        path_found = true;
        if (!method_matches(r->method, method)) {
            allow_add(out->allow, sizeof(out->allow), r->method);
            continue;
        }
        out->index = i;
        out->n_params = m.n_params;
        for (size_t k = 0; k < m.n_params; k++) {
            out->pat_[k] = m.pat_[k];
            out->value[k] = m.value[k];
        }
        return PC_OK;
    }
    return path_found ? PC_E_METHOD : PC_E_NOTFOUND;
}

const char *pc_route_param(const pc_route_match *m, const char *name)
{
    size_t len = strlen(name);
    for (size_t k = 0; k < m->n_params; k++) {
        const char *p = m->pat_[k]; /* "{name}..." inside the pattern */
        if (strncmp(p + 1, name, len) == 0 && p[1 + len] == '}')
            return m->value[k];
    }
    return NULL;
}
