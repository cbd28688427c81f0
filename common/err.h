/* err.h - popcast error codes and the error value every fallible call fills.
 *
 * Functions return 0 on success or a negative PC_E* code, and when given a
 * non-NULL pc_err they also leave a human readable message in it. Codes are
 * stable: their names are what the API returns in JSON errors and what an
 * agent puts in a nack's reason. */
#ifndef PC_ERR_H
#define PC_ERR_H

#include <stddef.h>

enum {
    PC_OK = 0,
    PC_E_INVALID = -1, /* malformed input */
    PC_E_NOTFOUND = -2,
    PC_E_EXISTS = -3,
    PC_E_TOO_LARGE = -4,
    PC_E_NOMEM = -5,
    PC_E_IO = -6,
    PC_E_STORE = -7,          /* LMDB failure other than the ones below */
    PC_E_SEQ_GAP = -8,        /* entry is ahead of applied+1 */
    PC_E_DUPLICATE = -9,      /* entry seq is already applied */
    PC_E_STALE_VERSION = -10, /* version not above the tenant's last one */
    PC_E_BAD_SIGNATURE = -11,
    PC_E_UNTRUSTED_KEY = -12,
    PC_E_HASH_MISMATCH = -13,
    PC_E_RUNTIME = -14,     /* the runtime could not load or run the code */
    PC_E_UNAVAILABLE = -15, /* a peer or resource is not reachable now */
    PC_E_AUTH = -16,        /* missing or wrong credentials */
    PC_E_FORBIDDEN = -17,
    PC_E_LIMIT = -18, /* a sandbox limit was hit (tenant code's CPU, memory, ...) */
    PC_E_INTERNAL = -19,
    PC_E_NOT_LEADER = -20,
    PC_E_TIMEOUT = -21,
    PC_E_METHOD = -22,          /* HTTP: the resource does not answer this method */
    PC_E_MEDIA_TYPE = -23,      /* HTTP: a body of a type this resource does not take */
    PC_E_LENGTH_REQUIRED = -24, /* HTTP: a body without Content-Length */
    PC_E_RATE_LIMITED = -25,    /* too many requests from one caller; retry later */
    PC_E_EXPIRED = -26,         /* a signed message past its expiry (heartbeats) */
    PC_E_REPLAYED = -27,        /* a message not newer than one already accepted */
    PC_E_BUNDLE_OMITTED = -28,  /* an announcement: the bundle must be fetched */
    PC_E_QUARANTINED = -29,     /* the tenant's live version is quarantined (misbehaved) */
    PC_E_BASE_UNKNOWN = -30,    /* a delta whose base the receiver does not hold */
    PC_E_OUTCOME_UNKNOWN = -31, /* a write went out and its outcome is not known: it may or
                                   may not be committed (only an idempotency key makes a
                                   retry safe) */
    PC_E_UNPROVEN = -32,        /* what was asked for rests on a fact no agent has shown */
    PC_E_COMPACTED = -33,       /* history asked for is no longer kept (a watch from too old a
                                   seq): list again */
};

typedef struct pc_err {
    int code;
    char msg[512];
} pc_err;

/* Records code and a printf-style message in err (if non-NULL); returns code
 * so callers can write `return pc_err_set(err, PC_E_INVALID, "...")`. */
int pc_err_set(pc_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prefixes the message already in err with more context. */
void pc_err_wrap(pc_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void pc_err_clear(pc_err *err);

/* Stable snake_case name of a code: "invalid", "bad_signature", ... */
const char *pc_err_name(int code);

#endif
