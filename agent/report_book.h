/* report_book.h - what an agent's status reports say, whole or as deltas
 * (docs/protocol.md "Delta reports").
 *
 * The book keeps the agent's latest whole status (a "generation", named by
 * its report counter) and, per tenant, the hash of its status and the
 * generation in which that last changed. A receiver that acknowledged the
 * report of generation B gets only the tenants changed after B, with the
 * digest of the whole table so it can check its merge; one that
 * acknowledged nothing gets everything. So a report's size follows what
 * changed, not how many tenants the agent holds.
 *
 * Invariant: a delta based on B lists every tenant whose status differs
 * from what it was in generation B. A tenant leaving the table cannot be
 * said in a delta, so bases older than its leaving are void (whole again).
 *
 * Not thread safe: the caller holds its own lock. */
#ifndef PC_REPORT_BOOK_H
#define PC_REPORT_BOOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "err.h"
#include "popcast.pb-c.h"

typedef struct pc_report_book pc_report_book;

pc_report_book *pc_report_book_new(void);
void pc_report_book_free(pc_report_book *b);

/* Makes whole (malloc'd, built by pc_applier_status, with agent_id and pop
 * malloc'd; owned by the book from now on) the latest generation, numbered
 * whole->counter (above every earlier one). PC_E_NOMEM leaves the book
 * with every base void (the next reports are whole). */
int pc_report_book_update(pc_report_book *b, Popcast__AgentStatus *whole);

/* Makes header (as pc_report_book_update takes whole, but built by
 * pc_applier_status_header: no tenants, no nacks) the latest generation,
 * with the tenants and nacks of the one before it, for a caller that
 * knows they have not changed since (pc_applier_tenants_generation). So
 * an idle agent's reports cost nothing per tenant to build. PC_E_NOTFOUND
 * (header not taken) when there is no earlier generation with every base
 * valid: build a whole one then. */
int pc_report_book_renew(pc_report_book *b, Popcast__AgentStatus *header);

/* The latest generation's counter (0: none yet). */
uint64_t pc_report_book_counter(const pc_report_book *b);

/* Packs the latest generation as a SyncCall for a receiver whose last
 * acknowledged report is base (0: none): a delta on base when the book
 * can, else whole. Signed with identity (NULL: an unsigned status, which
 * controllers refuse; for tests). *out is malloc'd; *delta says which it
 * is. PC_E_NOTFOUND before the first update. */
int pc_report_book_pack(const pc_report_book *b, uint64_t base, const pc_signing_key *identity,
                        uint8_t **out, size_t *len, bool *delta);

#endif
