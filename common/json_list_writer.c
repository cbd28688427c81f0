/* json_list_writer.c - a JSON object with one long array member, written
 * an element at a time (see json_list_writer.h). */
#include "json_list_writer.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define DUMP_FLAGS (JSON_COMPACT | JSON_ENSURE_ASCII)

struct pc_json_list_writer {
    char *text; /* the array's elements, comma separated, no brackets */
    size_t len, cap;
    size_t items;
    bool failed;
};

pc_json_list_writer *pc_json_list_writer_new(void)
{
    return calloc(1, sizeof(pc_json_list_writer));
}

void pc_json_list_writer_free(pc_json_list_writer *w)
{
    if (w == NULL)
        return;
    free(w->text);
    free(w);
}

/* Room for need more bytes. */
static bool reserve(pc_json_list_writer *w, size_t need)
{
    if (need <= w->cap - w->len)
        return true;
    size_t cap = w->cap ? w->cap : 4096;
    while (cap - w->len < need) {
        if (cap > SIZE_MAX / 2)
            return false;
        cap *= 2;
    }
    char *grown = realloc(w->text, cap);
    if (grown == NULL)
        return false;
    w->text = grown;
    w->cap = cap;
    return true;
}

int pc_json_list_writer_add(pc_json_list_writer *w, const json_t *item)
{
    if (w->failed)
        return -1;
    size_t comma = w->items > 0 ? 1 : 0;
    /* json_dumpb writes straight into the buffer when it fits, and says
     * how much it needs when it does not. */
    size_t need = json_dumpb(item, NULL, 0, DUMP_FLAGS | JSON_ENCODE_ANY);
    if (need == 0 || !reserve(w, comma + need)) {
        w->failed = true;
        return -1;
    }
    if (comma)
        w->text[w->len] = ',';
    if (json_dumpb(item, w->text + w->len + comma, need, DUMP_FLAGS | JSON_ENCODE_ANY) != need) {
        w->failed = true;
        return -1;
    }
    w->len += comma + need;
    w->items++;
    return 0;
}

char *pc_json_list_writer_finish(pc_json_list_writer *w, json_t *head, const char *key, size_t *len)
{
    char *out = NULL, *head_text = NULL, *key_text = NULL;
    *len = 0;
    if (w == NULL || w->failed || !json_is_object(head) || json_object_get(head, key) != NULL)
        goto done;
    json_t *k = json_string(key);
    key_text = k != NULL ? json_dumps(k, DUMP_FLAGS | JSON_ENCODE_ANY) : NULL;
    json_decref(k);
    head_text = json_dumps(head, DUMP_FLAGS);
    if (key_text == NULL || head_text == NULL)
        goto done;
    /* head_text is "{...}": the member goes before its closing brace. */
    size_t head_len = strlen(head_text) - 1, key_len = strlen(key_text);
    bool comma = json_object_size(head) > 0;
    size_t total = head_len + comma + key_len + 2 + w->len + 3; /* :[ ... ]}\n */
    if ((out = malloc(total + 1)) == NULL)
        goto done;
    size_t at = 0;
    memcpy(out, head_text, head_len);
    at += head_len;
    if (comma)
        out[at++] = ',';
    memcpy(out + at, key_text, key_len);
    at += key_len;
    out[at++] = ':';
    out[at++] = '[';
    if (w->len > 0)
        memcpy(out + at, w->text, w->len);
    at += w->len;
    memcpy(out + at, "]}\n", 4);
    *len = at + 3;
done:
    free(head_text);
    free(key_text);
    json_decref(head);
    pc_json_list_writer_free(w);
    return out;
}
