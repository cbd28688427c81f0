/* bundle.h - the bundle archive: a tenant's code and assets as one byte
 * string (a protobuf BundleArchive: an entrypoint path and a list of files).
 *
 * pc_bundle_open is the only reader of archive bytes and validates all of
 * it: every path is a safe relative path, no path repeats, the entrypoint is
 * one of the files, and counts and sizes are within limits. Nothing that
 * fails these checks is ever handed to a runtime. Packing is deterministic:
 * the same directory always yields the same bytes, hence the same hash. */
#ifndef PC_BUNDLE_H
#define PC_BUNDLE_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define PC_BUNDLE_MAX_FILES          4096
#define PC_BUNDLE_DEFAULT_ENTRYPOINT "main.lua"

typedef struct pc_bundle pc_bundle;

int pc_bundle_open(const uint8_t *bytes, size_t len, pc_bundle **out, pc_err *err);
void pc_bundle_free(pc_bundle *bundle);

const char *pc_bundle_entrypoint(const pc_bundle *bundle);
size_t pc_bundle_file_count(const pc_bundle *bundle);
/* The i-th file in path order (i < pc_bundle_file_count). */
void pc_bundle_file_at(const pc_bundle *bundle, size_t i, const char **path, const uint8_t **data,
                       size_t *len);
/* PC_E_NOTFOUND if path is not in the archive. Data stays owned by bundle. */
int pc_bundle_file(const pc_bundle *bundle, const char *path, const uint8_t **data, size_t *len);

/* Packs every regular file under dir (symlinks and special files are
 * refused) but what bundle_ignore.h leaves out: .git, .popcastignore and
 * the patterns in dir/.popcastignore. entrypoint NULL means PC_BUNDLE_DEFAULT_ENTRYPOINT. The
 * result is malloc'd; packing stops with PC_E_TOO_LARGE past max_size bytes. */
int pc_bundle_pack_dir(const char *dir, const char *entrypoint, size_t max_size, uint8_t **out,
                       size_t *out_len, pc_err *err);
/* Packs one file's content under name, which is also the entrypoint. */
int pc_bundle_pack_single(const char *name, const uint8_t *content, size_t len, uint8_t **out,
                          size_t *out_len, pc_err *err);

#endif
