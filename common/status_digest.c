/* status_digest.c - tenant table digests (see status_digest.h). */
#include "status_digest.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

bool pc_status_digest_tenant(pc_status_digest *out, const Popcast__TenantStatus *t)
{
    uint8_t stack[512];
    size_t len = popcast__tenant_status__get_packed_size(t);
    uint8_t *buf = len <= sizeof(stack) ? stack : malloc(len);
    if (buf == NULL)
        return false;
    popcast__tenant_status__pack(t, buf);
    crypto_generichash(out->b, sizeof(out->b), buf, len, NULL, 0);
    if (buf != stack)
        free(buf);
    return true;
}

void pc_status_digest_xor(pc_status_digest *acc, const pc_status_digest *h)
{
    for (size_t i = 0; i < sizeof(acc->b); i++)
        acc->b[i] ^= h->b[i];
}

bool pc_status_digest_equal(const pc_status_digest *a, const uint8_t *b, size_t len)
{
    return len == sizeof(a->b) && sodium_memcmp(a->b, b, len) == 0;
}
