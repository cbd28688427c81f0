/* json_text.c - untrusted text as JSON strings (see json_text.h). */
#include "json_text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

json_t *pc_json_text(const char *s)
{
    if (s == NULL)
        s = "";
    json_t *j = json_string(s); /* NULL when s is not valid UTF-8 */
    if (j != NULL)
        return j;
    size_t len = strlen(s);
    char *out = malloc(len * 4 + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80)
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, 5, "\\x%02x", c);
    }
    out[o] = '\0';
    j = json_string(out);
    free(out);
    return j;
}

int pc_json_set_text(json_t *o, const char *key, const char *s)
{
    return json_object_set_new(o, key, pc_json_text(s));
}
