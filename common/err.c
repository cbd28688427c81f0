/* err.c - error values (see err.h). */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int pc_err_set(pc_err *err, int code, const char *fmt, ...)
{
    if (err != NULL) {
        va_list ap;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return code;
}

void pc_err_wrap(pc_err *err, const char *fmt, ...)
{
    if (err == NULL)
        return;
    char prefix[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    size_t plen = strlen(prefix);
    size_t olen = strnlen(err->msg, sizeof(err->msg) - 1);
    size_t room = sizeof(err->msg) - 1 - plen - 2;
    if (olen > room)
        olen = room;
    memmove(err->msg + plen + 2, err->msg, olen);
    memcpy(err->msg, prefix, plen);
    err->msg[plen] = ':';
    err->msg[plen + 1] = ' ';
    err->msg[plen + 2 + olen] = '\0';
}

void pc_err_clear(pc_err *err)
{
    if (err != NULL) {
        err->code = PC_OK;
        err->msg[0] = '\0';
    }
}

const char *pc_err_name(int code)
{
    switch (code) {
    case PC_OK: return "ok";
    case PC_E_INVALID: return "invalid";
    case PC_E_NOTFOUND: return "not_found";
    case PC_E_EXISTS: return "exists";
    case PC_E_TOO_LARGE: return "too_large";
    case PC_E_NOMEM: return "out_of_memory";
    case PC_E_IO: return "io_error";
    case PC_E_STORE: return "store_error";
    case PC_E_SEQ_GAP: return "seq_gap";
    case PC_E_DUPLICATE: return "duplicate";
    case PC_E_STALE_VERSION: return "stale_version";
    case PC_E_BAD_SIGNATURE: return "bad_signature";
    case PC_E_UNTRUSTED_KEY: return "untrusted_key";
    case PC_E_HASH_MISMATCH: return "hash_mismatch";
    case PC_E_RUNTIME: return "runtime_error";
    case PC_E_UNAVAILABLE: return "unavailable";
    case PC_E_AUTH: return "unauthorized";
    case PC_E_FORBIDDEN: return "forbidden";
    case PC_E_LIMIT: return "limit_exceeded";
    case PC_E_INTERNAL: return "internal";
    case PC_E_NOT_LEADER: return "not_leader";
    case PC_E_TIMEOUT: return "timeout";
    case PC_E_METHOD: return "method_not_allowed";
    case PC_E_MEDIA_TYPE: return "unsupported_media_type";
    case PC_E_LENGTH_REQUIRED: return "length_required";
    case PC_E_RATE_LIMITED: return "rate_limited";
    case PC_E_EXPIRED: return "expired";
    case PC_E_REPLAYED: return "replayed";
    case PC_E_BUNDLE_OMITTED: return "bundle_omitted";
    case PC_E_QUARANTINED: return "quarantined";
    case PC_E_BASE_UNKNOWN: return "base_unknown";
    case PC_E_OUTCOME_UNKNOWN: return "outcome_unknown";
    case PC_E_UNPROVEN: return "unproven";
    case PC_E_COMPACTED: return "compacted";
    default: return "unknown";
    }
}
