/* sse.c - reading Server-Sent Events (see sse.h). */
#include "sse.h"

#include <stdlib.h>
#include <string.h>

/* The value of field in line ("field: value" or "field:value"), or NULL. */
static const char *field(const char *line, const char *name)
{
    size_t n = strlen(name);
    if (strncmp(line, name, n) != 0 || line[n] != ':')
        return NULL;
    return line[n + 1] == ' ' ? line + n + 2 : line + n + 1;
}

/* One event's lines (NUL-terminated, "\n" between them). */
static bool dispatch(char *block, pc_sse_event_fn on_event, void *arg)
{
    pc_sse_event e = {.id = "", .type = "message", .data = ""};
    bool any = false;
    for (char *line = block; line != NULL;) {
        char *next = strchr(line, '\n');
        if (next != NULL)
            *next++ = '\0';
        size_t n = strlen(line);
        if (n > 0 && line[n - 1] == '\r')
            line[n - 1] = '\0';
        const char *v;
        if ((v = field(line, "id")) != NULL) {
            e.id = v;
        } else if ((v = field(line, "event")) != NULL) {
            e.type = v;
            any = true;
        } else if ((v = field(line, "data")) != NULL) {
            e.data = v;
            any = true;
        }
        line = next;
    }
    return !any || on_event(arg, &e);
}

bool pc_sse_feed(pc_sse *p, const char *data, size_t len, pc_sse_event_fn on_event, void *arg)
{
    if (p->failed)
        return false;
    if (p->len + len + 1 > p->cap) {
        size_t cap = (p->len + len + 1) * 2;
        char *grown = cap > 2 * (size_t)PC_SSE_LINE_MAX + 2 ? NULL : realloc(p->buf, cap);
        if (grown == NULL) {
            p->failed = true;
            return false;
        }
        p->buf = grown;
        p->cap = cap;
    }
    memcpy(p->buf + p->len, data, len);
    p->len += len;
    p->buf[p->len] = '\0';
    char *start = p->buf, *end;
    while ((end = strstr(start, "\n\n")) != NULL) {
        *end = '\0';
        if (!dispatch(start, on_event, arg)) {
            p->failed = true;
            return false;
        }
        start = end + 2;
    }
    p->len -= (size_t)(start - p->buf);
    memmove(p->buf, start, p->len + 1);
    if (p->len > PC_SSE_LINE_MAX) {
        p->failed = true;
        return false;
    }
    return true;
}

void pc_sse_free(pc_sse *p)
{
    free(p->buf);
    p->buf = NULL;
    p->len = p->cap = 0;
    p->failed = false;
}
