/* lua_heap.h - the small blocks of one Lua isolate, in pages of its own.
 *
 * An isolate makes thousands of small allocations and is freed as a whole
 * (its version goes, or it sat idle past lua_idle_ttl_ms). Taken from the
 * process heap, those blocks sat between the long-lived per-tenant records
 * the agent made meanwhile, and once freed left holes smaller than a page,
 * which glibc can neither reuse for bigger blocks nor give back: after
 * 10,000 deploys, tens of MiB. Here every block of at most
 * PC_LUA_HEAP_SMALL_MAX bytes comes from chunks mapped for this heap alone
 * and given back with it (pc_lua_heap_release). Larger blocks come from malloc: freed, their holes
 * hold whole pages, which malloc_trim gives back.
 *
 * Invariants:
 *  - A block is resized or freed with the size it was last given, as Lua's
 *    allocator contract guarantees: that size says where the block lives.
 *  - pc_lua_heap_footprint() is what the heap holds from the system: its
 *    chunks, used or free, and its live large blocks. A freed small block
 *    stays in its chunk for a block of its size class; only
 *    pc_lua_heap_release() gives chunks back.
 *  - Growth within the limit given to pc_lua_heap_fits() never takes the
 *    footprint past it; a shrink may, by at most one chunk, since a shrink
 *    is never refused for the limit.
 *  - One thread at a time: an isolate is never entered by two.
 *
 * Under AddressSanitizer, a free or not yet given part of a chunk is
 * poisoned, so a use after free inside an isolate is still reported. */
#ifndef PC_LUA_HEAP_H
#define PC_LUA_HEAP_H

#include <stdbool.h>
#include <stddef.h>

#define PC_LUA_HEAP_SMALL_MAX 4096 /* larger blocks come from malloc */
/* Released chunks of each of the three smallest sizes (16, 32, 64 KiB)
 * kept, process-wide, for the next heaps: 448 KiB at most in all. */
#define PC_LUA_HEAP_SPARE_CHUNKS 4
#define PC_LUA_HEAP_CLASSES      40 /* size classes of small blocks */

/* Zeroed, it is an empty heap. Its fields are the module's own. */
typedef struct pc_lua_heap {
    void *chunks;                           /* mapped chunks, linked through their first word */
    char *bump, *end;                       /* the newest chunk's part not given yet */
    size_t chunk_bytes;                     /* the chunks' total size */
    size_t large_bytes;                     /* live blocks over PC_LUA_HEAP_SMALL_MAX */
    void *free_blocks[PC_LUA_HEAP_CLASSES]; /* per class, linked */
} pc_lua_heap;

/* Lua's allocator contract: ptr NULL with osize 0 allocates nsize bytes;
 * nsize 0 frees ptr (osize its size) and returns NULL; otherwise resizes,
 * keeping the first min(osize, nsize) bytes. NULL when the system has no
 * memory (the block, if any, is unchanged). */
void *pc_lua_heap_realloc(pc_lua_heap *h, void *ptr, size_t osize, size_t nsize);

/* Whether resizing a block of osize bytes (0: a new block) to nsize keeps
 * the footprint within limit. */
bool pc_lua_heap_fits(const pc_lua_heap *h, size_t osize, size_t nsize, size_t limit);

size_t pc_lua_heap_footprint(const pc_lua_heap *h);

/* Gives every chunk back. Blocks still live are gone with them, except
 * large ones, which the caller must have freed (lua_close frees
 * everything). Chunks of the small sizes are kept for the next heaps,
 * PC_LUA_HEAP_SPARE_CHUNKS of each at most, rather than unmapped: a
 * short-lived isolate (the controller checks every upload in one) would
 * otherwise map and unmap a chunk each time, and unmapping in a threaded
 * process interrupts every core to flush its TLB (a fifth of a
 * controller's CPU under a write load). The rest are unmapped. A chunk
 * is handed out again last in, first out. */
void pc_lua_heap_release(pc_lua_heap *h);

/* Bytes of released chunks kept for the next heaps. */
size_t pc_lua_heap_spare_bytes(void);

#endif
