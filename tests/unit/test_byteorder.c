/* test_byteorder.c - common/byteorder.h: the exact bytes each codec writes
 * (LMDB keys and the raft frame on disk depend on them), round trips at
 * the edges, unaligned access, and that big-endian keys sort as numbers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "byteorder.h"

static void test_exact_bytes(void **state)
{
    uint8_t b[8];
    pc_be64_put(b, 0x0102030405060708ull);
    assert_memory_equal(b, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
    assert_int_equal(pc_be64_get(b), 0x0102030405060708ull);
    pc_le64_put(b, 0x0102030405060708ull);
    assert_memory_equal(b, "\x08\x07\x06\x05\x04\x03\x02\x01", 8);
    assert_int_equal(pc_le64_get(b), 0x0102030405060708ull);
    memset(b, 0xee, sizeof(b));
    pc_be32_put(b, 0x0a0b0c0du);
    /* Exactly four bytes written. */
    assert_memory_equal(b, "\x0a\x0b\x0c\x0d\xee\xee\xee\xee", 8);
    assert_int_equal(pc_be32_get(b), 0x0a0b0c0du);
}

static void test_round_trips_unaligned(void **state)
{
    static const uint64_t v64[] = {
        0, 1, 0xff, 0x100, 0x8000000000000000ull, UINT64_MAX, 0x00ff00ff00ff00ffull};
    static const uint32_t v32[] = {0, 1, 0xff, 0x100, 0x80000000u, UINT32_MAX};
    uint8_t raw[16];
    for (size_t off = 0; off < 8; off++) {
        for (size_t i = 0; i < sizeof(v64) / sizeof(v64[0]); i++) {
            pc_be64_put(raw + off, v64[i]);
            assert_int_equal(pc_be64_get(raw + off), v64[i]);
            pc_le64_put(raw + off, v64[i]);
            assert_int_equal(pc_le64_get(raw + off), v64[i]);
        }
        for (size_t i = 0; i < sizeof(v32) / sizeof(v32[0]); i++) {
            pc_be32_put(raw + off, v32[i]);
            assert_int_equal(pc_be32_get(raw + off), v32[i]);
        }
    }
}

/* LMDB compares keys with memcmp: big-endian keeps numeric order. */
static void test_big_endian_sorts_as_numbers(void **state)
{
    static const uint64_t v[] = {
        0, 1, 255, 256, 65535, 65536, 1ull << 32, (1ull << 32) + 1, UINT64_MAX - 1, UINT64_MAX};
    size_t n = sizeof(v) / sizeof(v[0]);
    for (size_t i = 0; i + 1 < n; i++) {
        uint8_t a[8], b[8];
        pc_be64_put(a, v[i]);
        pc_be64_put(b, v[i + 1]);
        assert_true(memcmp(a, b, 8) < 0);
        uint8_t c[4], d[4];
        pc_be32_put(c, (uint32_t)v[i]);
        pc_be32_put(d, (uint32_t)v[i] + 1);
        if ((uint32_t)v[i] != UINT32_MAX)
            assert_true(memcmp(c, d, 4) < 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_bytes),
        cmocka_unit_test(test_round_trips_unaligned),
        cmocka_unit_test(test_big_endian_sorts_as_numbers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
