/* bundle_ignore.h - which files under a directory stay out of a bundle
 * (docs/cli.md ".popcastignore"): .git (at any depth) and .popcastignore
 * itself always, plus the patterns of DIR/.popcastignore, one per line:
 *
 *   # a comment; blank lines are skipped
 *   *.log          no '/': matches a file or directory name at any depth
 *   /build/out.js  a '/': matches the path from DIR (a leading '/' is
 *                  only an anchor), '*' and '?' never crossing a '/'
 *   node_modules/  a trailing '/': directories only (nothing under them
 *                  is read)
 *
 * Patterns are fnmatch(3) globs. A '!' (re-include) is refused with an
 * error rather than half-supported; so are more than PC_IGNORE_MAX
 * patterns and lines longer than PC_IGNORE_LINE_MAX bytes. */
#ifndef PC_BUNDLE_IGNORE_H
#define PC_BUNDLE_IGNORE_H

#include <stdbool.h>

#include "err.h"

#define PC_IGNORE_MAX      1000
#define PC_IGNORE_LINE_MAX 1024

typedef struct pc_ignore pc_ignore;

/* Reads DIR/.popcastignore if there is one. */
int pc_ignore_load(pc_ignore **out, const char *dir, pc_err *err);
/* rel: the path under DIR ("a/b.lua"); is_dir: it names a directory. */
bool pc_ignore_match(const pc_ignore *ig, const char *rel, bool is_dir);
void pc_ignore_free(pc_ignore *ig);

#endif
