/* names.c - name validation (see names.h). */
#include "names.h"

#include <jansson.h>
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

bool pc_change_message_valid(const char *message)
{
    if (message == NULL)
        return false;
    size_t n = strnlen(message, PC_CHANGE_MESSAGE_MAX + 1);
    if (n > PC_CHANGE_MESSAGE_MAX)
        return false;
    /* jansson's strict UTF-8 check (overlong forms, surrogates and code
     * points past U+10FFFF are refused). */
    json_t *s = json_stringn(message, n);
    if (s == NULL)
        return false;
    json_decref(s);
    const unsigned char *u = (const unsigned char *)message;
    for (size_t i = 0; i < n; i++) {
        if (u[i] < 0x20 || u[i] == 0x7f)
            return false;
        /* U+0080-U+009F: 0xC2 0x80-0x9F in UTF-8 */
        if (u[i] == 0xc2 && i + 1 < n && u[i + 1] <= 0x9f)
            return false;
    }
    return true;
}
