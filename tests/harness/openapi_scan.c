/* openapi_scan.c - see openapi_scan.h. */
#include "openapi_scan.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

void pc_openapi_shape(const char *pattern, char *out, size_t cap)
{
    size_t n = 0;
    for (const char *p = pattern; *p != '\0' && n + 3 < cap; p++) {
        out[n++] = *p;
        if (*p == '{') {
            while (*p != '\0' && *p != '}')
                p++;
            out[n++] = '}';
            if (*p == '\0')
                break;
        }
    }
    out[n] = '\0';
}

static bool is_method_line(const char *l)
{
    return strcmp(l, "    get:") == 0 || strcmp(l, "    post:") == 0 ||
           strcmp(l, "    put:") == 0 || strcmp(l, "    delete:") == 0;
}

size_t pc_openapi_scan(const char *doc, pc_openapi_op *ops, size_t cap)
{
    char path[160] = "";
    size_t n = 0;
    bool in_paths = false;
    for (const char *line = doc; *line != '\0';) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        char l[256];
        snprintf(l, sizeof(l), "%.*s", (int)(len < sizeof(l) - 1 ? len : sizeof(l) - 1), line);
        len = strlen(l);
        if (strcmp(l, "paths:") == 0) {
            in_paths = true;
        } else if (l[0] != ' ' && l[0] != '\0') {
            in_paths = false;
        } else if (in_paths && strncmp(l, "  /", 3) == 0 && l[len - 1] == ':') {
            l[len - 1] = '\0';
            pc_openapi_shape(l + 2, path, sizeof(path));
        } else if (in_paths && is_method_line(l) && n < cap) {
            memset(&ops[n], 0, sizeof(ops[n]));
            for (size_t i = 0; l[4 + i] != ':' && i + 1 < sizeof(ops[n].method); i++)
                ops[n].method[i] = (char)(l[4 + i] - 'a' + 'A');
            snprintf(ops[n].shape, sizeof(ops[n].shape), "%s", path);
            n++;
        } else if (in_paths && n > 0 && strncmp(l, "      operationId: ", 19) == 0) {
            ops[n - 1].has_id = true;
        }
        line = end ? end + 1 : line + len;
    }
    return n;
}

void pc_openapi_check_routes(const char *doc, const char *what, const char *const *methods,
                             const char *const *patterns, size_t n)
{
    static pc_openapi_op ops[256];
    size_t n_ops = pc_openapi_scan(doc, ops, 256);
    assert_true(n_ops > 0);
    for (size_t i = 0; i < n; i++) {
        char s[160];
        pc_openapi_shape(patterns[i], s, sizeof(s));
        bool found = false;
        for (size_t k = 0; k < n_ops; k++)
            if (strcmp(ops[k].method, methods[i]) == 0 && strcmp(ops[k].shape, s) == 0)
                ops[k].matched = found = true;
        if (!found)
            fail_msg("route %s %s is not in %s", methods[i], patterns[i], what);
    }
    for (size_t k = 0; k < n_ops; k++) {
        if (!ops[k].matched)
            fail_msg("%s lists %s %s, which no route answers", what, ops[k].method, ops[k].shape);
        if (!ops[k].has_id)
            fail_msg("%s: %s %s has no operationId", what, ops[k].method, ops[k].shape);
    }
}
