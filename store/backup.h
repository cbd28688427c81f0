/* backup.h - a consistent copy of a store while its daemon runs, and
 * putting one back (docs/operations.md "Backups and recovery").
 *
 * A backup is one LMDB read transaction copied out (compacted) through
 * LMDB's own mdb_env_copyfd2: the store as it was at one instant, while
 * the daemon goes on writing. The file is created 0600 and never
 * overwritten; it appears at its path only once complete and synced. */
#ifndef PC_STORE_BACKUP_H
#define PC_STORE_BACKUP_H

#include <stdint.h>

#include "err.h"

/* Copies the store in dir to out_path. *seq gets the applied seq the
 * copy holds. PC_E_EXISTS when out_path (or its ".partial") exists. */
int pc_store_backup(const char *dir, const char *out_path, uint64_t *seq, pc_err *err);

/* Puts the backup file into dir as its store: dir must hold no store
 * (PC_E_EXISTS), and the copy must open as one (PC_E_INVALID otherwise,
 * and nothing is left in dir). *seq gets its applied seq. */
int pc_store_restore(const char *backup_path, const char *dir, uint64_t *seq, pc_err *err);

#endif
