/* test_lua_heap.c - an isolate's own heap (runtime-adapter/lua_heap.h):
 * blocks keep their bytes across moves, freed blocks are reused, the
 * footprint never passes the limit growth was checked against (whatever
 * the pattern of sizes), chunks really go back to the system, and under
 * AddressSanitizer a freed block is poisoned. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "lua_heap.h"

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#ifdef TEST_ASAN
#include <sanitizer/asan_interface.h>
#endif

static void fill(void *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        ((unsigned char *)p)[i] = (unsigned char)(seed + i * 7);
}

static void check(const void *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (((const unsigned char *)p)[i] != (unsigned char)(seed + i * 7))
            fail_msg("byte %zu of %zu changed", i, n);
}

/* Every size up to past the small bound, grown and shrunk across classes
 * and between the chunks and malloc, keeps its bytes. */
static void test_blocks_keep_their_bytes(void **state)
{
    (void)state;
    pc_lua_heap h = {0};
    enum { N = 300 };
    void *blocks[N];
    size_t sizes[N];
    for (unsigned i = 0; i < N; i++) {
        sizes[i] = 1 + (i * 37) % (PC_LUA_HEAP_SMALL_MAX + 2000);
        blocks[i] = pc_lua_heap_realloc(&h, NULL, 0, sizes[i]);
        assert_non_null(blocks[i]);
        assert_int_equal((uintptr_t)blocks[i] % 16, 0);
        fill(blocks[i], sizes[i], i);
    }
    for (unsigned i = 0; i < N; i++)
        check(blocks[i], sizes[i], i);
    for (unsigned i = 0; i < N; i++) {
        size_t grown = sizes[i] * 3 + 5;
        blocks[i] = pc_lua_heap_realloc(&h, blocks[i], sizes[i], grown);
        assert_non_null(blocks[i]);
        check(blocks[i], sizes[i], i);
        fill(blocks[i], grown, i + 1);
        sizes[i] = grown;
    }
    for (unsigned i = 0; i < N; i++) {
        size_t shrunk = sizes[i] / 5 + 1;
        blocks[i] = pc_lua_heap_realloc(&h, blocks[i], sizes[i], shrunk);
        assert_non_null(blocks[i]);
        check(blocks[i], shrunk, i + 1);
        sizes[i] = shrunk;
    }
    for (unsigned i = 0; i < N; i++)
        assert_null(pc_lua_heap_realloc(&h, blocks[i], sizes[i], 0));
    assert_int_equal(h.large_bytes, 0);
    pc_lua_heap_release(&h);
    assert_int_equal(pc_lua_heap_footprint(&h), 0);
}

/* Small blocks come from the heap's chunks, large ones from malloc, and
 * the footprint counts both. */
static void test_small_in_chunks_large_from_malloc(void **state)
{
    (void)state;
    pc_lua_heap h = {0};
    void *small = pc_lua_heap_realloc(&h, NULL, 0, 100);
    assert_non_null(small);
    size_t chunks = h.chunk_bytes;
    assert_true(chunks > 0);
    assert_int_equal(h.large_bytes, 0);
    void *large = pc_lua_heap_realloc(&h, NULL, 0, PC_LUA_HEAP_SMALL_MAX + 1);
    assert_non_null(large);
    assert_int_equal(h.large_bytes, PC_LUA_HEAP_SMALL_MAX + 1);
    assert_int_equal(h.chunk_bytes, chunks);
    assert_int_equal(pc_lua_heap_footprint(&h), chunks + PC_LUA_HEAP_SMALL_MAX + 1);
    large = pc_lua_heap_realloc(&h, large, PC_LUA_HEAP_SMALL_MAX + 1, 64);
    assert_int_equal(h.large_bytes, 0);
    pc_lua_heap_realloc(&h, large, 64, 0);
    pc_lua_heap_realloc(&h, small, 100, 0);
    pc_lua_heap_release(&h);
}

/* A freed block is given again for the next block of its class, and a
 * resize within the class stays in place: neither grows the heap. */
static void test_freed_blocks_are_reused(void **state)
{
    (void)state;
    pc_lua_heap h = {0};
    void *a = pc_lua_heap_realloc(&h, NULL, 0, 40);
    void *b = pc_lua_heap_realloc(&h, NULL, 0, 40);
    size_t held = pc_lua_heap_footprint(&h);
    pc_lua_heap_realloc(&h, a, 40, 0);
    void *c = pc_lua_heap_realloc(&h, NULL, 0, 33); /* same 48-byte class */
    assert_ptr_equal(c, a);
    assert_ptr_equal(pc_lua_heap_realloc(&h, c, 33, 48), c);
    assert_int_equal(pc_lua_heap_footprint(&h), held);
    pc_lua_heap_realloc(&h, b, 40, 0);
    pc_lua_heap_realloc(&h, c, 48, 0);
    pc_lua_heap_release(&h);
}

/* Growth checked with pc_lua_heap_fits never takes the footprint past the
 * limit: not by filling one class, and not by hopping between classes
 * (each class keeps its freed blocks, so a heap that handed those out
 * again without counting them could hold many times the limit). */
static void test_growth_within_the_limit(void **state)
{
    (void)state;
    const size_t limit = 512 * 1024;
    pc_lua_heap h = {0};
    enum { MAX_BLOCKS = 100000 };
    void **blocks = calloc(MAX_BLOCKS, sizeof(*blocks));
    assert_non_null(blocks);
    size_t refused = 0;
    for (size_t size = 16; size <= PC_LUA_HEAP_SMALL_MAX * 2; size += size / 2) {
        size_t n = 0;
        while (n < MAX_BLOCKS && pc_lua_heap_fits(&h, 0, size, limit)) {
            blocks[n] = pc_lua_heap_realloc(&h, NULL, 0, size);
            assert_non_null(blocks[n]);
            n++;
            assert_true(pc_lua_heap_footprint(&h) <= limit);
        }
        if (n < MAX_BLOCKS)
            refused++;
        for (size_t i = 0; i < n; i++)
            pc_lua_heap_realloc(&h, blocks[i], size, 0);
    }
    assert_true(refused > 0);
    assert_true(pc_lua_heap_footprint(&h) <= limit);
    /* A block that fits in what the heap holds is never refused. */
    void *again = NULL;
    assert_true(pc_lua_heap_fits(&h, 0, 16, limit));
    again = pc_lua_heap_realloc(&h, NULL, 0, 16);
    assert_non_null(again);
    pc_lua_heap_realloc(&h, again, 16, 0);
    /* Nor is a large block within the limit, once the rest is released. */
    pc_lua_heap_release(&h);
    assert_true(pc_lua_heap_fits(&h, 0, limit, limit));
    assert_false(pc_lua_heap_fits(&h, 0, limit + 1, limit));
    free(blocks);
}

static bool mapped(const void *p)
{
    unsigned char vec[1];
    errno = 0;
    int rc = mincore((void *)p, (size_t)sysconf(_SC_PAGESIZE), vec);
    assert_true(rc == 0 || errno == ENOMEM);
    return rc == 0;
}

/* A heap of one block: its one chunk is the smallest. */
static void *one_chunk_heap(pc_lua_heap *h)
{
    memset(h, 0, sizeof(*h));
    assert_non_null(pc_lua_heap_realloc(h, NULL, 0, 100));
    assert_int_equal(h->chunk_bytes, 16 * 1024);
    return h->chunks;
}

/* Released chunks of the small sizes are kept for the next heaps, up to
 * PC_LUA_HEAP_SPARE_CHUNKS of a size, and handed out last in, first out;
 * the rest are unmapped: that memory is the system's again. */
static void test_release_keeps_a_few_small_chunks(void **state)
{
    (void)state;
    enum { N = PC_LUA_HEAP_SPARE_CHUNKS + 2 };
    pc_lua_heap h[N];
    void *chunk[N];
    /* N heaps at once take every kept 16 KiB chunk there was. */
    for (int i = 0; i < N; i++)
        chunk[i] = one_chunk_heap(&h[i]);
    size_t spare_before = pc_lua_heap_spare_bytes();
    for (int i = 0; i < N; i++)
        pc_lua_heap_release(&h[i]);
    assert_int_equal(pc_lua_heap_spare_bytes(),
                     spare_before + PC_LUA_HEAP_SPARE_CHUNKS * 16 * 1024);
    for (int i = 0; i < N; i++)
        assert_true(mapped(chunk[i]) == (i < PC_LUA_HEAP_SPARE_CHUNKS));
    /* The next heap gets the chunk kept last. */
    pc_lua_heap again;
    assert_ptr_equal(one_chunk_heap(&again), chunk[PC_LUA_HEAP_SPARE_CHUNKS - 1]);
    assert_int_equal(pc_lua_heap_spare_bytes(),
                     spare_before + (PC_LUA_HEAP_SPARE_CHUNKS - 1) * 16 * 1024);
    pc_lua_heap_release(&again);
}

/* Chunks larger than the kept sizes are unmapped at once. */
static void test_release_unmaps_large_chunks(void **state)
{
    (void)state;
    pc_lua_heap h = {0};
    for (int i = 0; i < 2000; i++)
        assert_non_null(pc_lua_heap_realloc(&h, NULL, 0, 200));
    char *newest = h.chunks; /* the last chunk mapped: 256 KiB */
    assert_int_equal(((size_t *)newest)[1], 256 * 1024);
    assert_true(mapped(newest));
    pc_lua_heap_release(&h);
    assert_int_equal(pc_lua_heap_footprint(&h), 0);
    assert_false(mapped(newest));
}

#ifdef TEST_ASAN
/* A freed block, and the part of a chunk not given yet, are poisoned: a
 * use after free inside an isolate is reported as it was with malloc. */
static void test_freed_blocks_are_poisoned(void **state)
{
    (void)state;
    pc_lua_heap h = {0};
    char *p = pc_lua_heap_realloc(&h, NULL, 0, 64);
    assert_false(__asan_address_is_poisoned(p));
    assert_false(__asan_address_is_poisoned(p + 63));
    assert_true(__asan_address_is_poisoned(p + 64)); /* the next block, not given */
    pc_lua_heap_realloc(&h, p, 64, 0);
    assert_true(__asan_address_is_poisoned(p));
    assert_true(__asan_address_is_poisoned(p + 32));
    char *q = pc_lua_heap_realloc(&h, NULL, 0, 50);
    assert_ptr_equal(q, p);
    assert_false(__asan_address_is_poisoned(q + 49));
    pc_lua_heap_realloc(&h, q, 50, 0);
    pc_lua_heap_release(&h);
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blocks_keep_their_bytes),
        cmocka_unit_test(test_small_in_chunks_large_from_malloc),
        cmocka_unit_test(test_freed_blocks_are_reused),
        cmocka_unit_test(test_growth_within_the_limit),
        cmocka_unit_test(test_release_keeps_a_few_small_chunks),
        cmocka_unit_test(test_release_unmaps_large_chunks),
#ifdef TEST_ASAN
        cmocka_unit_test(test_freed_blocks_are_poisoned),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
