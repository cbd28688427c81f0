/* bundle_ignore.c - .popcastignore (see bundle_ignore.h). */
#include "bundle_ignore.h"

#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct pattern {
    char *glob;
    bool anchored; /* held a '/': matched against the whole path */
    bool dir_only;
} pattern;

struct pc_ignore {
    pattern *p;
    size_t n;
};

static int add(pc_ignore *ig, const char *glob, bool anchored, bool dir_only, pc_err *err)
{
    pattern *grown = realloc(ig->p, (ig->n + 1) * sizeof(*grown));
    if (grown == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    ig->p = grown;
    if ((ig->p[ig->n].glob = strdup(glob)) == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    ig->p[ig->n].anchored = anchored;
    ig->p[ig->n].dir_only = dir_only;
    ig->n++;
    return PC_OK;
}

/* One line of the file (without its newline). */
static int parse_line(pc_ignore *ig, char *line, const char *path, unsigned lineno, pc_err *err)
{
    size_t len = strlen(line);
    while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t' || line[len - 1] == '\r'))
        line[--len] = '\0';
    if (len == 0 || line[0] == '#')
        return PC_OK;
    if (line[0] == '!')
        return pc_err_set(err, PC_E_INVALID,
                          "%s:%u: '!' (re-include) is not supported: list what to leave out", path,
                          lineno);
    bool dir_only = false;
    if (line[len - 1] == '/') {
        dir_only = true;
        line[--len] = '\0';
    }
    bool anchored = strchr(line, '/') != NULL;
    const char *glob = line[0] == '/' ? line + 1 : line;
    if (glob[0] == '\0')
        return pc_err_set(err, PC_E_INVALID, "%s:%u: an empty pattern", path, lineno);
    if (ig->n >= PC_IGNORE_MAX + 2)
        return pc_err_set(err, PC_E_INVALID, "%s: more than %d patterns", path, PC_IGNORE_MAX);
    return add(ig, glob, anchored, dir_only, err);
}

int pc_ignore_load(pc_ignore **out, const char *dir, pc_err *err)
{
    pc_ignore *ig = calloc(1, sizeof(*ig));
    if (ig == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    int rc = add(ig, ".git", false, false, err);
    if (rc == PC_OK)
        rc = add(ig, ".popcastignore", true, false, err);
    char path[4096];
    snprintf(path, sizeof(path), "%s/.popcastignore", dir);
    FILE *f = rc == PC_OK ? fopen(path, "r") : NULL;
    if (rc == PC_OK && f == NULL && errno != ENOENT)
        rc = pc_err_set(err, PC_E_IO, "cannot read %s: %s", path, strerror(errno));
    char line[PC_IGNORE_LINE_MAX + 2];
    unsigned lineno = 0;
    while (rc == PC_OK && f != NULL && fgets(line, sizeof(line), f) != NULL) {
        lineno++;
        size_t len = strlen(line);
        if (len > 0 && line[len - 1] == '\n')
            line[--len] = '\0';
        else if (!feof(f)) {
            rc = pc_err_set(err, PC_E_INVALID, "%s:%u: a line longer than %d bytes", path, lineno,
                            PC_IGNORE_LINE_MAX);
            break;
        }
        rc = parse_line(ig, line, path, lineno, err);
    }
    if (f != NULL)
        fclose(f);
    if (rc != PC_OK) {
        pc_ignore_free(ig);
        return rc;
    }
    *out = ig;
    return PC_OK;
}

bool pc_ignore_match(const pc_ignore *ig, const char *rel, bool is_dir)
{
    const char *base = strrchr(rel, '/');
    base = base != NULL ? base + 1 : rel;
    for (size_t i = 0; i < ig->n; i++) {
        const pattern *p = &ig->p[i];
        if (p->dir_only && !is_dir)
            continue;
        if (p->anchored ? fnmatch(p->glob, rel, FNM_PATHNAME) == 0 : fnmatch(p->glob, base, 0) == 0)
            return true;
    }
    return false;
}

void pc_ignore_free(pc_ignore *ig)
{
    if (ig == NULL)
        return;
    for (size_t i = 0; i < ig->n; i++)
        free(ig->p[i].glob);
    free(ig->p);
    free(ig);
}
