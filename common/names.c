/* names.c - name validation (see names.h). */
#include "names.h"

#include <string.h>

static bool all_in(const char *s, size_t min, size_t max, const char *extra, bool upper)
{
    if (s == NULL)
        return false;
    size_t n = strnlen(s, max + 1);
    if (n < min || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
            continue;
        if (upper && c >= 'A' && c <= 'Z')
            continue;
        if (c != '\0' && strchr(extra, c) != NULL)
            continue;
        return false;
    }
    return true;
}

bool pc_tenant_name_valid(const char *name)
{
    return all_in(name, 1, PC_TENANT_MAX, "-", false);
}

bool pc_id_valid(const char *id)
{
    return all_in(id, 1, PC_ID_MAX, "._-", true);
}

bool pc_runtime_name_valid(const char *name)
{
    return all_in(name, 1, 32, "", false);
}

bool pc_idempotency_key_valid(const char *key)
{
    return all_in(key, 1, PC_IDEMPOTENCY_KEY_MAX, "._:-", true);
}

bool pc_bundle_path_valid(const char *path)
{
    if (!all_in(path, 1, PC_PATH_MAX, "._-/", true))
        return false;
    const char *p = path;
    for (;;) {
        size_t len = strcspn(p, "/");
        if (len == 0)
            return false; /* leading '/', "//" or trailing '/' */
        if ((len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
            return false;
        if (p[len] == '\0')
            return true;
        p += len + 1;
    }
}
