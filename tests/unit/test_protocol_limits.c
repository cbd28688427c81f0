/* test_protocol_limits.c - common/protocol_limits.h: the numbers
 * docs/protocol.md promises, and the receive limits both daemons derive
 * from them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "protocol_limits.h"

static void test_documented_values(void **state)
{
    assert_int_equal(PC_CHUNK_BYTES, 1u << 20);
    assert_int_equal(PC_SYNC_BATCH_ENTRIES, 256);
    assert_int_equal(PC_SYNC_BATCH_BYTES, 8u << 20);
    assert_int_equal(PC_SYNC_REQUEST_MAX, 1u << 20);
    /* A relay's batch holds at least one report of the largest size. */
    assert_true(PC_STATUS_BATCH_MAX >= PC_SYNC_REQUEST_MAX + 64 * 1024);
    assert_int_equal(PC_SYNC_WORKERS, 8);
    assert_int_equal(PC_REDIAL_MIN_MS, 100);
    assert_int_equal(PC_REDIAL_MAX_MS, 2000);
}

static void test_derived_receive_limits(void **state)
{
    /* sub: the bundle limit plus 1 MiB. */
    assert_int_equal(pc_pub_message_max(64u << 20), (64u << 20) + (1u << 20));
    assert_int_equal(pc_pub_message_max(1), 1 + (1u << 20));
    /* req: max(max_bundle, 64 MiB) + 2 MiB. */
    assert_int_equal(pc_sync_reply_max(1u << 20), (64u << 20) + (2u << 20));
    assert_int_equal(pc_sync_reply_max(64u << 20), (64u << 20) + (2u << 20));
    assert_int_equal(pc_sync_reply_max(1u << 30), (1u << 30) + (2u << 20));
    /* Every reply the controller sends by default fits. */
    for (uint64_t b = 1; b <= (1u << 30); b *= 2) {
        assert_true(pc_sync_reply_max(b) >= PC_SYNC_BATCH_BYTES + PC_SYNC_REPLY_SLACK);
        assert_true(pc_sync_reply_max(b) >= PC_CHUNK_BYTES + PC_SYNC_REPLY_SLACK);
        assert_true(pc_pub_message_max(b) > b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_documented_values),
        cmocka_unit_test(test_derived_receive_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
