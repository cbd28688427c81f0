/* tail_buffer.h - tenants' log lines waiting to leave the agent for the
 * controllers that tail them (popcast tail; docs/protocol.md "Tail").
 *
 * The edge adds lines from its request threads: a handler's print output,
 * a failed request's error, a sampled request line. Lines are kept only
 * for tenants some controller asked for (its TailAck, renewed by each
 * poll): for every other tenant, pc_tail_buffer_wanted answers false with
 * no lock taken when nobody tails anything, and the edge builds nothing.
 *
 * Bounded: at most max_lines lines of at most max_bytes in all; a line
 * that does not fit is dropped and counted for its tenant, and request
 * lines past request_lines_per_s per tenant are counted as sampled out.
 * Both counts travel with the next batch (TailDrop), so a tailer sees
 * that lines are missing. Adding never waits for the network: the shipper
 * takes lines under the same short lock and sends them after.
 *
 * Thread safe. */
#ifndef PC_TAIL_BUFFER_H
#define PC_TAIL_BUFFER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adapter.h"
#include "names.h"
#include "popcast.pb-c.h"

/* Controllers a buffer tells apart (a bit each in a line's mask). */
#define PC_TAIL_CONTROLLERS_MAX 64
/* A line's path is cut to this many bytes. */
#define PC_TAIL_PATH_MAX 512

typedef struct pc_tail_buffer pc_tail_buffer;

typedef struct pc_tail_buffer_options {
    size_t controllers;           /* how many controllers ask (1..PC_TAIL_CONTROLLERS_MAX) */
    size_t max_lines;             /* default 4096 */
    size_t max_bytes;             /* text of the lines held, default 1 MiB */
    uint32_t request_lines_per_s; /* per tenant; default 100 */
    uint64_t want_ttl_ms;         /* an ask not renewed for this long lapses; default 10000 */
} pc_tail_buffer_options;

/* One line, as the edge hands it over (copied; a message is cut at
 * PC_PRINT_LINE_MAX bytes, a path at PC_TAIL_PATH_MAX). */
typedef struct pc_tail_line {
    const char *tenant;
    uint64_t version;
    Popcast__TailKind kind;
    int64_t time_unix_ms;
    const char *message; /* NULL: none */
    size_t message_len;
    const char *method; /* NULL: none */
    const char *path;
    unsigned status;
    uint64_t duration_us;
} pc_tail_line;

/* What pc_tail_buffer_take hands the shipper: records and drops, each with
 * the mask of the controllers that asked for its tenant. */
typedef struct pc_tail_taken {
    Popcast__TailRecord **records;
    uint64_t *record_masks;
    size_t n_records;
    Popcast__TailDrop **drops;
    uint64_t *drop_masks;
    size_t n_drops;
} pc_tail_taken;

/* NULL when out of memory or the options are out of range. */
pc_tail_buffer *pc_tail_buffer_new(const pc_tail_buffer_options *opt);
void pc_tail_buffer_free(pc_tail_buffer *b);

/* Controller c tails exactly these tenants now (its TailAck), until
 * now_ms + want_ttl_ms unless asked again. */
void pc_tail_buffer_want(pc_tail_buffer *b, size_t c, char *const *tenants, size_t n,
                         int64_t now_ms);
/* Whether some controller tails tenant now. */
bool pc_tail_buffer_wanted(pc_tail_buffer *b, const char *tenant, int64_t now_ms);
/* Whether a request line of tenant is to be recorded now (the per-tenant
 * rate); one that is not is counted as sampled out. */
bool pc_tail_buffer_sample(pc_tail_buffer *b, const char *tenant, int64_t now_ms);
/* Keeps line if its tenant is tailed and it fits; else it is dropped
 * (counted when its tenant is tailed). */
void pc_tail_buffer_add(pc_tail_buffer *b, const pc_tail_line *line, int64_t now_ms);

/* Counts n lines of tenant lost before they reached the buffer (a
 * request printed more than the edge keeps of one). */
void pc_tail_buffer_count_dropped(pc_tail_buffer *b, const char *tenant, uint64_t n,
                                  int64_t now_ms);

/* Takes every line held and the drop counts (the buffer is empty after).
 * false when there is nothing, or out of memory (then what was held is
 * counted as dropped and sent next time). */
bool pc_tail_buffer_take(pc_tail_buffer *b, int64_t now_ms, pc_tail_taken *out);
void pc_tail_taken_clear(pc_tail_taken *t);

/* Lines dropped since the start (buffer full), for the metric. */
uint64_t pc_tail_buffer_dropped_total(pc_tail_buffer *b);

#endif
