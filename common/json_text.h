/* json_text.h - text from outside (tenant code's error messages, names in
 * reports, bytes quoted from a bundle) as JSON strings.
 *
 * JSON strings must be valid UTF-8 and jansson refuses anything else, so a
 * message quoting one stray byte would turn a clear error into a failed
 * answer. These helpers never fail on content: text that is not valid
 * UTF-8 is kept readable with every byte above 0x7f written as "\xNN". */
#ifndef PC_JSON_TEXT_H
#define PC_JSON_TEXT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* A new JSON string of s (NULL: ""). NULL only when out of memory. */
json_t *pc_json_text(const char *s);

/* Sets key of object o to pc_json_text(s); returns 0, -1 when out of
 * memory. */
int pc_json_set_text(json_t *o, const char *key, const char *s);

/* o as one compact, ASCII-only line ending in '\n' (malloc'd; its length
 * in *len), for JSON-lines files; releases o. NULL when out of memory. */
char *pc_json_line(json_t *o, size_t *len);

/* "2026-12-03T06:31:11.401Z" for wall-clock milliseconds (cap >= 32). */
void pc_json_utc_time(char *out, size_t cap, int64_t wall_ms);

#endif
