/* lua_heap.c - the small blocks of one Lua isolate, in pages of its own.
 * The contract and the reasons are in lua_heap.h. */
#include "lua_heap.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#if defined(__SANITIZE_ADDRESS__)
#define HEAP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HEAP_ASAN 1
#endif
#endif
#ifdef HEAP_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n)   ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n)   ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* A chunk starts with its link and its size; blocks follow, 16-byte
 * aligned like malloc's. The first chunk is small (most isolates are
 * tens of KiB), the next ones double the heap, up to a bound so that an
 * isolate's last chunk wastes little. */
#define CHUNK_HEADER 16
#define CHUNK_MIN    (16u * 1024)
#define CHUNK_MAX    (256u * 1024)

/* Classes: 16-byte steps up to 256, 64-byte steps up to 1 KiB, 256-byte
 * steps up to 4 KiB (a block wastes at most a quarter of its class). */
static unsigned class_of(size_t n)
{
    if (n <= 256)
        return (unsigned)((n + 15) / 16 - 1);
    if (n <= 1024)
        return (unsigned)(16 + (n - 256 + 63) / 64 - 1);
    return (unsigned)(28 + (n - 1024 + 255) / 256 - 1);
}

static size_t class_size(unsigned c)
{
    if (c < 16)
        return (size_t)(c + 1) * 16;
    if (c < 28)
        return 256 + (size_t)(c - 15) * 64;
    return 1024 + (size_t)(c - 27) * 256;
}

static size_t next_chunk_size(const pc_lua_heap *h)
{
    size_t size = h->chunk_bytes;
    return size < CHUNK_MIN ? CHUNK_MIN : size > CHUNK_MAX ? CHUNK_MAX : size;
}

static bool has_room(const pc_lua_heap *h, unsigned c)
{
    return h->free_blocks[c] != NULL ||
           (h->bump != NULL && (size_t)(h->end - h->bump) >= class_size(c));
}

/* Chunks of released heaps, kept for the next heaps, per size (CHUNK_MIN
 * << i, the sizes a short-lived isolate takes), linked through their first
 * word; at most PC_LUA_HEAP_SPARE_CHUNKS of each. */
#define SPARE_SIZES 3 /* 16, 32 and 64 KiB */
static pthread_mutex_t spare_lock = PTHREAD_MUTEX_INITIALIZER;
static void *spare[SPARE_SIZES];
static unsigned spare_count[SPARE_SIZES];
static size_t spare_bytes;

static int spare_index(size_t size)
{
    for (int i = 0; i < SPARE_SIZES; i++)
        if (size == (size_t)CHUNK_MIN << i)
            return i;
    return -1;
}

static char *map_chunk(size_t size)
{
    int i = spare_index(size);
    char *m = NULL;
    if (i >= 0) {
        pthread_mutex_lock(&spare_lock);
        if ((m = spare[i]) != NULL) {
            UNPOISON(m, sizeof(void *));
            spare[i] = *(void **)m;
            spare_count[i]--;
            spare_bytes -= size;
        }
        pthread_mutex_unlock(&spare_lock);
    }
    if (m != NULL)
        return m;
    m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return m == MAP_FAILED ? NULL : m;
}

static void unmap_chunk(void *c, size_t size)
{
    int i = spare_index(size);
    pthread_mutex_lock(&spare_lock);
    bool kept = i >= 0 && spare_count[i] < PC_LUA_HEAP_SPARE_CHUNKS;
    if (kept) {
        POISON(c, size);
        UNPOISON(c, sizeof(void *));
        *(void **)c = spare[i];
        POISON(c, sizeof(void *));
        spare[i] = c;
        spare_count[i]++;
        spare_bytes += size;
    }
    pthread_mutex_unlock(&spare_lock);
    if (!kept) {
        /* The next mapping at this address must not inherit the poison. */
        UNPOISON(c, size);
        munmap(c, size);
    }
}

size_t pc_lua_heap_spare_bytes(void)
{
    pthread_mutex_lock(&spare_lock);
    size_t n = spare_bytes;
    pthread_mutex_unlock(&spare_lock);
    return n;
}

static bool new_chunk(pc_lua_heap *h)
{
    size_t size = next_chunk_size(h);
    char *m = map_chunk(size);
    if (m == NULL)
        return false;
    UNPOISON(m, CHUNK_HEADER);
    ((void **)m)[0] = h->chunks;
    ((size_t *)m)[1] = size;
    h->chunks = m;
    h->bump = m + CHUNK_HEADER;
    h->end = m + size;
    h->chunk_bytes += size;
    POISON(h->bump, size - CHUNK_HEADER);
    return true;
}

static void *take(pc_lua_heap *h, size_t n)
{
    if (n > PC_LUA_HEAP_SMALL_MAX) {
        void *p = malloc(n);
        if (p != NULL)
            h->large_bytes += n;
        return p;
    }
    unsigned c = class_of(n);
    void *p = h->free_blocks[c];
    if (p != NULL) {
        UNPOISON(p, sizeof(void *));
        h->free_blocks[c] = *(void **)p;
    } else {
        if (!has_room(h, c) && !new_chunk(h))
            return NULL;
        p = h->bump;
        h->bump += class_size(c);
    }
    UNPOISON(p, n);
    return p;
}

static void give_back(pc_lua_heap *h, void *p, size_t n)
{
    if (p == NULL)
        return;
    if (n > PC_LUA_HEAP_SMALL_MAX) {
        free(p);
        h->large_bytes -= n;
        return;
    }
    unsigned c = class_of(n);
    UNPOISON(p, sizeof(void *));
    *(void **)p = h->free_blocks[c];
    h->free_blocks[c] = p;
    POISON(p, class_size(c));
}

void *pc_lua_heap_realloc(pc_lua_heap *h, void *ptr, size_t osize, size_t nsize)
{
    if (ptr == NULL)
        osize = 0; /* Lua passes a type tag there */
    if (nsize == 0) {
        give_back(h, ptr, osize);
        return NULL;
    }
    if (ptr != NULL && osize > PC_LUA_HEAP_SMALL_MAX && nsize > PC_LUA_HEAP_SMALL_MAX) {
        void *p = realloc(ptr, nsize);
        if (p != NULL)
            h->large_bytes = h->large_bytes - osize + nsize;
        return p;
    }
    if (ptr != NULL && osize <= PC_LUA_HEAP_SMALL_MAX && nsize <= PC_LUA_HEAP_SMALL_MAX &&
        class_of(osize) == class_of(nsize)) {
        UNPOISON(ptr, nsize);
        if (nsize < osize)
            POISON((char *)ptr + nsize, osize - nsize);
        return ptr;
    }
    void *p = take(h, nsize);
    if (p == NULL)
        return NULL;
    if (ptr != NULL) {
        memcpy(p, ptr, osize < nsize ? osize : nsize);
        give_back(h, ptr, osize);
    }
    return p;
}

bool pc_lua_heap_fits(const pc_lua_heap *h, size_t osize, size_t nsize, size_t limit)
{
    size_t held = pc_lua_heap_footprint(h);
    if (osize > PC_LUA_HEAP_SMALL_MAX)
        held -= osize; /* a large block moved or resized is given back */
    size_t need = nsize;
    if (nsize <= PC_LUA_HEAP_SMALL_MAX) {
        unsigned c = class_of(nsize);
        bool same_slot = osize != 0 && osize <= PC_LUA_HEAP_SMALL_MAX && class_of(osize) == c;
        need = same_slot || has_room(h, c) ? 0 : next_chunk_size(h);
    }
    return need <= limit && held <= limit - need;
}

size_t pc_lua_heap_footprint(const pc_lua_heap *h)
{
    return h->chunk_bytes + h->large_bytes;
}

void pc_lua_heap_release(pc_lua_heap *h)
{
    void *c = h->chunks;
    while (c != NULL) {
        void *next = ((void **)c)[0];
        size_t size = ((size_t *)c)[1];
        unmap_chunk(c, size);
        c = next;
    }
    memset(h, 0, sizeof(*h));
}
