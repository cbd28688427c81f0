/* bundle.c - bundle archive reader and packer (see bundle.h). */
#include "bundle.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bundle_ignore.h"
#include "names.h"
#include "popcast.pb-c.h"

struct pc_bundle {
    Popcast__BundleArchive *archive;
};

static int cmp_file_path(const void *a, const void *b)
{
    const Popcast__BundleFile *fa = *(Popcast__BundleFile *const *)a;
    const Popcast__BundleFile *fb = *(Popcast__BundleFile *const *)b;
    return strcmp(fa->path, fb->path);
}

int pc_bundle_open(const uint8_t *bytes, size_t len, pc_bundle **out, pc_err *err)
{
    *out = NULL;
    Popcast__BundleArchive *a = popcast__bundle_archive__unpack(NULL, len, bytes);
    if (a == NULL)
        return pc_err_set(err, PC_E_INVALID, "bundle is not a popcast bundle archive");
    int rc = PC_OK;
    if (a->n_files == 0) {
        rc = pc_err_set(err, PC_E_INVALID, "bundle has no files");
        goto fail;
    }
    if (a->n_files > PC_BUNDLE_MAX_FILES) {
        rc = pc_err_set(err, PC_E_TOO_LARGE, "bundle has %zu files (at most %d)", a->n_files,
                        PC_BUNDLE_MAX_FILES);
        goto fail;
    }
    if (!pc_bundle_path_valid(a->entrypoint)) {
        rc = pc_err_set(err, PC_E_INVALID, "bundle entrypoint is missing or not a safe path");
        goto fail;
    }
    for (size_t i = 0; i < a->n_files; i++) {
        if (!pc_bundle_path_valid(a->files[i]->path)) {
            rc = pc_err_set(err, PC_E_INVALID, "bundle file #%zu has an unsafe path", i);
            goto fail;
        }
    }
    /* Sorting makes duplicate detection O(n log n) and lookups binary. */
    qsort(a->files, a->n_files, sizeof(a->files[0]), cmp_file_path);
    for (size_t i = 1; i < a->n_files; i++) {
        if (strcmp(a->files[i - 1]->path, a->files[i]->path) == 0) {
            rc = pc_err_set(err, PC_E_INVALID, "bundle has the path %s twice", a->files[i]->path);
            goto fail;
        }
    }
    pc_bundle *b = calloc(1, sizeof(*b));
    if (b == NULL) {
        rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
        goto fail;
    }
    b->archive = a;
    if (pc_bundle_file(b, a->entrypoint, NULL, NULL) != PC_OK) {
        rc = pc_err_set(err, PC_E_INVALID, "bundle entrypoint %s is not one of its files",
                        a->entrypoint);
        free(b);
        goto fail;
    }
    *out = b;
    return PC_OK;
fail:
    popcast__bundle_archive__free_unpacked(a, NULL);
    return rc;
}

void pc_bundle_free(pc_bundle *bundle)
{
    if (bundle == NULL)
        return;
    popcast__bundle_archive__free_unpacked(bundle->archive, NULL);
    free(bundle);
}

const char *pc_bundle_entrypoint(const pc_bundle *bundle)
{
    return bundle->archive->entrypoint;
}

size_t pc_bundle_file_count(const pc_bundle *bundle)
{
    return bundle->archive->n_files;
}

void pc_bundle_file_at(const pc_bundle *bundle, size_t i, const char **path, const uint8_t **data,
                       size_t *len)
{
    const Popcast__BundleFile *f = bundle->archive->files[i];
    *path = f->path;
    *data = f->content.data;
    *len = f->content.len;
}

int pc_bundle_file(const pc_bundle *bundle, const char *path, const uint8_t **data, size_t *len)
{
    size_t lo = 0, hi = bundle->archive->n_files;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const Popcast__BundleFile *f = bundle->archive->files[mid];
        int c = strcmp(path, f->path);
        if (c == 0) {
            if (data != NULL)
                *data = f->content.data;
            if (len != NULL)
                *len = f->content.len;
            return PC_OK;
        }
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return PC_E_NOTFOUND;
}

/* Packing. */

typedef struct file_list {
    Popcast__BundleFile **files;
    size_t count, cap;
    size_t total;
    size_t max_size;
    const pc_ignore *ignore; /* what stays out (.popcastignore) */
} file_list;

static void file_list_free(file_list *fl)
{
    for (size_t i = 0; i < fl->count; i++) {
        free(fl->files[i]->path);
        free(fl->files[i]->content.data);
        free(fl->files[i]);
    }
    free(fl->files);
}

static int read_whole_file(const char *path, size_t max, uint8_t **out, size_t *out_len,
                           pc_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return pc_err_set(err, PC_E_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return pc_err_set(err, PC_E_INVALID, "%s is not a regular file", path);
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return pc_err_set(err, PC_E_TOO_LARGE, "%s is larger than the bundle limit", path);
    }
    uint8_t *buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        close(fd);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n <= 0) {
            int saved = errno;
            free(buf);
            close(fd);
            return pc_err_set(err, PC_E_IO, "cannot read %s: %s", path,
                              n == 0 ? "file shrank while reading" : strerror(saved));
        }
        got += (size_t)n;
    }
    close(fd);
    *out = buf;
    *out_len = got;
    return PC_OK;
}

static int add_file(file_list *fl, const char *rel, const char *full, pc_err *err)
{
    if (!pc_bundle_path_valid(rel))
        return pc_err_set(err, PC_E_INVALID,
                          "%s: bundle paths may only use letters, digits, '.', '_', '-' and '/'",
                          rel);
    if (fl->count >= PC_BUNDLE_MAX_FILES)
        return pc_err_set(err, PC_E_TOO_LARGE, "more than %d files", PC_BUNDLE_MAX_FILES);
    uint8_t *data = NULL;
    size_t len = 0;
    int rc =
        read_whole_file(full, fl->max_size - (fl->total < fl->max_size ? fl->total : fl->max_size),
                        &data, &len, err);
    if (rc != PC_OK)
        return rc;
    if (fl->count == fl->cap) {
        size_t cap = fl->cap ? fl->cap * 2 : 16;
        Popcast__BundleFile **grown = realloc(fl->files, cap * sizeof(*grown));
        if (grown == NULL) {
            free(data);
            return pc_err_set(err, PC_E_NOMEM, "out of memory");
        }
        fl->files = grown;
        fl->cap = cap;
    }
    Popcast__BundleFile *f = malloc(sizeof(*f));
    char *path = strdup(rel);
    if (f == NULL || path == NULL) {
        free(f);
        free(path);
        free(data);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    popcast__bundle_file__init(f);
    f->path = path;
    f->content.data = data;
    f->content.len = len;
    fl->files[fl->count++] = f;
    fl->total += len + strlen(rel) + 16;
    if (fl->total > fl->max_size)
        return pc_err_set(err, PC_E_TOO_LARGE, "bundle exceeds %zu bytes", fl->max_size);
    return PC_OK;
}

static int walk(file_list *fl, const char *root, const char *rel, int depth, pc_err *err)
{
    if (depth > 32)
        return pc_err_set(err, PC_E_INVALID, "directory tree deeper than 32 levels");
    char dirpath[4096];
    snprintf(dirpath, sizeof(dirpath), "%s%s%s", root, rel[0] ? "/" : "", rel);
    DIR *d = opendir(dirpath);
    if (d == NULL)
        return pc_err_set(err, PC_E_IO, "cannot open directory %s: %s", dirpath, strerror(errno));
    int rc = PC_OK;
    struct dirent *de;
    while (rc == PC_OK && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char child_rel[PC_PATH_MAX + 2], full[4096 + PC_PATH_MAX + 2];
        int n =
            snprintf(child_rel, sizeof(child_rel), "%s%s%s", rel, rel[0] ? "/" : "", de->d_name);
        if (n < 0 || (size_t)n >= sizeof(child_rel)) {
            rc = pc_err_set(err, PC_E_INVALID, "path under %s is too long", dirpath);
            break;
        }
        snprintf(full, sizeof(full), "%s/%s", root, child_rel);
        struct stat st;
        if (lstat(full, &st) != 0) {
            rc = pc_err_set(err, PC_E_IO, "cannot stat %s: %s", full, strerror(errno));
        } else if (fl->ignore != NULL &&
                   pc_ignore_match(fl->ignore, child_rel, S_ISDIR(st.st_mode))) {
            continue; /* left out, and nothing under it is read */
        } else if (S_ISDIR(st.st_mode)) {
            rc = walk(fl, root, child_rel, depth + 1, err);
        } else if (S_ISREG(st.st_mode)) {
            rc = add_file(fl, child_rel, full, err);
        } else {
            rc = pc_err_set(err, PC_E_INVALID, "%s is not a regular file or directory", full);
        }
    }
    closedir(d);
    return rc;
}

static int pack_archive(Popcast__BundleFile **files, size_t count, const char *entrypoint,
                        uint8_t **out, size_t *out_len, pc_err *err)
{
    Popcast__BundleArchive a = POPCAST__BUNDLE_ARCHIVE__INIT;
    a.entrypoint = (char *)entrypoint;
    a.files = files;
    a.n_files = count;
    size_t len = popcast__bundle_archive__get_packed_size(&a);
    uint8_t *buf = malloc(len ? len : 1);
    if (buf == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    popcast__bundle_archive__pack(&a, buf);
    *out = buf;
    *out_len = len;
    return PC_OK;
}

int pc_bundle_pack_dir(const char *dir, const char *entrypoint, size_t max_size, uint8_t **out,
                       size_t *out_len, pc_err *err)
{
    if (entrypoint == NULL)
        entrypoint = PC_BUNDLE_DEFAULT_ENTRYPOINT;
    pc_ignore *ignore = NULL;
    int rc = pc_ignore_load(&ignore, dir, err);
    if (rc != PC_OK)
        return rc;
    file_list fl = {.max_size = max_size, .ignore = ignore};
    rc = walk(&fl, dir, "", 0, err);
    if (rc == PC_OK && fl.count == 0)
        rc = pc_err_set(err, PC_E_INVALID, "%s has no files", dir);
    if (rc == PC_OK) {
        qsort(fl.files, fl.count, sizeof(fl.files[0]), cmp_file_path);
        bool found = false;
        for (size_t i = 0; i < fl.count; i++)
            found = found || strcmp(fl.files[i]->path, entrypoint) == 0;
        if (!found)
            rc =
                pc_err_set(err, PC_E_INVALID, "entrypoint %s is not a file in %s", entrypoint, dir);
    }
    if (rc == PC_OK)
        rc = pack_archive(fl.files, fl.count, entrypoint, out, out_len, err);
    file_list_free(&fl);
    pc_ignore_free(ignore);
    return rc;
}

int pc_bundle_pack_single(const char *name, const uint8_t *content, size_t len, uint8_t **out,
                          size_t *out_len, pc_err *err)
{
    if (!pc_bundle_path_valid(name))
        return pc_err_set(err, PC_E_INVALID, "%s is not a valid bundle path", name);
    Popcast__BundleFile f = POPCAST__BUNDLE_FILE__INIT;
    Popcast__BundleFile *files[1] = {&f};
    f.path = (char *)name;
    f.content.data = (uint8_t *)content;
    f.content.len = len;
    return pack_archive(files, 1, name, out, out_len, err);
}
