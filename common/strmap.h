/* strmap.h - a hash map from strings to pointers (open addressing, linear
 * probing, backward-shift removal: no tombstones, so lookups stay short
 * however many keys come and go).
 *
 * Keys are copied: the map owns its copies, the caller keeps its own.
 * Values are the caller's pointers; the map never frees them, and NULL is
 * not a value (get answers NULL for "absent"). The table doubles when it
 * is half full and never shrinks.
 *
 * Keys can come from outside (agent ids in status reports, token ids), so
 * the default hash is keyed SipHash (libsodium's crypto_shorthash) with a
 * random key per map: nobody can choose keys that all collide. Iteration
 * order is therefore unspecified and differs between runs.
 *
 * Not thread safe: callers hold their own lock around every call. */
#ifndef PC_STRMAP_H
#define PC_STRMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pc_strmap pc_strmap;

/* Returns NULL when out of memory. */
pc_strmap *pc_strmap_new(void);
/* The same with the given hash function, for tests that need collisions
 * (a constant function puts every key in one probe run). */
typedef uint64_t (*pc_strmap_hash_fn)(const char *key, size_t len);
pc_strmap *pc_strmap_new_with_hash(pc_strmap_hash_fn hash);
/* Frees the map and its key copies, not the values. NULL is a no-op. */
void pc_strmap_free(pc_strmap *m);

/* Sets key to value, replacing the value of a key already present.
 * PC_E_INVALID for a NULL key or value, PC_E_NOMEM when out of memory (the
 * map is then unchanged). */
int pc_strmap_put(pc_strmap *m, const char *key, void *value);
/* The value of key, NULL when absent. */
void *pc_strmap_get(const pc_strmap *m, const char *key);
/* Removes key; returns its value, NULL when it was absent. */
void *pc_strmap_remove(pc_strmap *m, const char *key);
size_t pc_strmap_count(const pc_strmap *m);

/* Iteration: start with *pos = 0; each call yields one entry and returns
 * true, then false once every entry was seen. The map must not change
 * during an iteration. *key is the map's copy, valid until the key is
 * removed or the map freed. */
bool pc_strmap_next(const pc_strmap *m, size_t *pos, const char **key, void **value);

#endif
