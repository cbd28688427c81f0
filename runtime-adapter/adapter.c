/* adapter.c - helpers shared by every adapter (see adapter.h). */
#include "adapter.h"

#include <stdlib.h>

void pc_response_clear(pc_response *res)
{
    for (size_t i = 0; i < res->n_headers; i++) {
        free(res->headers[i].name);
        free(res->headers[i].value);
    }
    free(res->headers);
    free(res->body);
    res->headers = NULL;
    res->n_headers = 0;
    res->body = NULL;
    res->body_len = 0;
}
