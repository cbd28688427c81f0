/* json_list_writer.h - a JSON object with one long array member, written
 * an element at a time.
 *
 * A document such as an agent's /v1/status with 10,000 tenants, built as
 * one jansson tree, is about a million small blocks (16 MB) allocated at
 * once and freed at once, interleaved with whatever else the process
 * allocates meanwhile: the freed blocks leave holes between long-lived
 * records that glibc can neither reuse nor give back. Here each element
 * is turned into text as soon as it is built, so only one element's tree
 * exists at a time and the text grows in one buffer.
 *
 * Not thread safe: one writer per document. */
#ifndef PC_JSON_LIST_WRITER_H
#define PC_JSON_LIST_WRITER_H

#include <jansson.h>
#include <stddef.h>

typedef struct pc_json_list_writer pc_json_list_writer;

/* NULL when out of memory. */
pc_json_list_writer *pc_json_list_writer_new(void);
void pc_json_list_writer_free(pc_json_list_writer *w);

/* Appends item (any JSON value; not released) as the array's next
 * element. Returns 0, -1 when out of memory (the writer is then spent:
 * finish returns NULL). */
int pc_json_list_writer_add(pc_json_list_writer *w, const json_t *item);

/* The document: head (an object; released) with one more member, key,
 * the array of every item added, in order. Compact, ASCII only (as
 * pc_httpd_reply_json writes), ending in '\n'; malloc'd, its length in
 * *len. Frees w. NULL when out of memory, when head is not an object,
 * or when head already has key. */
char *pc_json_list_writer_finish(pc_json_list_writer *w, json_t *head, const char *key,
                                 size_t *len);

#endif
