/* tail_lines.h - what an agent's tail batch says, checked and rendered as
 * the events a tail gets (docs/api.md "Tail"). The sync server verifies
 * who sent a batch; this checks what it carries. */
#ifndef PC_TAIL_LINES_H
#define PC_TAIL_LINES_H

#include <jansson.h>

#include "popcast.pb-c.h"

/* NULL when every line and drop names a valid tenant and every line a
 * known kind; else why the batch is refused. */
const char *pc_tail_batch_invalid(const Popcast__TailBatch *b);

/* A "line" event's data for record r of batch b (checked), or NULL when
 * out of memory. Text from the agent that is not UTF-8 is kept readable
 * (json_text.h). */
json_t *pc_tail_line_json(const Popcast__TailBatch *b, const Popcast__TailRecord *r);

/* A "dropped" event's data for drop d of batch b, or NULL. */
json_t *pc_tail_drop_json(const Popcast__TailBatch *b, const Popcast__TailDrop *d);

#endif
