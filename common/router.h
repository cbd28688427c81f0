/* router.h - matching an HTTP method and path against a route table.
 *
 * A server describes its routes once, as a table; the router says which
 * route a request names, what its path parameters are, or why none
 * matches (no such path: PC_E_NOTFOUND; the path exists but not for this
 * method: PC_E_METHOD, with the methods it does answer). What a route
 * means beyond its method and pattern (its handler, who may call it,
 * whether it writes) is the server's own: the table's elements are the
 * server's structs, each starting with a pc_route.
 *
 * Patterns are absolute paths whose segments are literals or {name}
 * placeholders ("/v1/tenants/{tenant}/versions/{version}"). A placeholder
 * matches exactly one non-empty segment; empty segments of a request path
 * ("//") are ignored, as a query string ("?...") is. "GET" routes also
 * answer HEAD. Pure functions: safe from any thread. */
#ifndef PC_ROUTER_H
#define PC_ROUTER_H

#include <stddef.h>

#include "err.h"

#define PC_ROUTE_MAX_SEGMENTS 8
#define PC_ROUTE_MAX_PATH     2048

typedef struct pc_route {
    const char *method; /* "GET", "POST", "PUT", "DELETE" */
    const char *pattern;
} pc_route;

typedef struct pc_route_match {
    size_t index; /* of the matched route in the table */
    /* Placeholder values of the matched route, in pattern order (they
     * point into the match itself: do not copy a match). */
    const char *value[PC_ROUTE_MAX_SEGMENTS];
    size_t n_params;
    const char *query; /* after '?', "" when none */
    char allow[96];    /* PC_E_METHOD: "GET, POST" */
    /* Storage for the values above. */
    char buf_[PC_ROUTE_MAX_PATH + 1];
    const char *pat_[PC_ROUTE_MAX_SEGMENTS];
} pc_route_match;

/* Matches method and target (the request URI: path and optional query)
 * against table, n elements of stride bytes, each starting with a
 * pc_route. Returns PC_OK and fills out; PC_E_NOTFOUND when no pattern
 * matches the path (also for targets that are not absolute paths, too
 * long, or with too many segments); PC_E_METHOD when some pattern matches
 * but none for this method (out->allow lists the methods that would). */
int pc_route_find(const void *table, size_t n, size_t stride, const char *method,
                  const char *target, pc_route_match *out);

/* The value of placeholder name in a match, NULL when the route has none. */
const char *pc_route_param(const pc_route_match *m, const char *name);

#endif
