/* openapi_scan.h - the operations an OpenAPI document of this repository
 * lists, read from its own layout (docs/openapi*.yaml keep it: a path at
 * two spaces, "  /path:", its methods at four, "    get:", an
 * operationId at six), for tests that hold a route table against it. */
#ifndef PC_OPENAPI_SCAN_H
#define PC_OPENAPI_SCAN_H

#include <stdbool.h>
#include <stddef.h>

typedef struct pc_openapi_op {
    char method[8];  /* "GET", ... */
    char shape[160]; /* the path with each {name} made {} */
    bool has_id;     /* it has an operationId */
    bool matched;    /* the caller's */
} pc_openapi_op;

/* The operations of doc (NUL-terminated), at most cap: how many. */
size_t pc_openapi_scan(const char *doc, pc_openapi_op *ops, size_t cap);
/* pattern with each {name} made {} (a route table and a document may
 * name a parameter differently). */
void pc_openapi_shape(const char *pattern, char *out, size_t cap);
/* Fails the test unless every (method, pattern) of the table is in doc,
 * doc lists nothing else, and each of its operations has an operationId.
 * what names the document in messages. */
void pc_openapi_check_routes(const char *doc, const char *what, const char *const *methods,
                             const char *const *patterns, size_t n);

#endif
