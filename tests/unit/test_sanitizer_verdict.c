/* test_sanitizer_verdict.c - how the harness judges a daemon's log in the
 * sanitizer build (docs/testing.md "Sanitizers"): a LeakSanitizer report
 * is accepted only when every directly leaked block was allocated by nng
 * itself, or is libraft 0.15's one known 16-byte block; any leak of
 * popcast's own, any other libraft leak, any other sanitizer report, and
 * a report cut short fail. The logs are real reports, trimmed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

static const char log_head[] =
    "2026-12-03T05:47:50.719Z INFO  applier: t01 version 13 (seq 61) is live\n"
    "2026-12-03T05:47:50.979Z INFO  agent: signal 15: shutting down\n"
    "\n"
    "=================================================================\n"
    "==3820==ERROR: LeakSanitizer: detected memory leaks\n"
    "\n";

/* nng#1713: a report message whose reference nng's transport dropped. */
static const char nng_message_leak[] =
    "Direct leak of 112 byte(s) in 1 object(s) allocated from:\n"
    "    #0 0x7f77cd0b83b7 in __interceptor_calloc asan_malloc_linux.cpp:77\n"
    "    #1 0x7f77ccf65c60  (/lib/x86_64-linux-gnu/libnng.so.1+0x1cc60)\n"
    "    #2 0x55f1782b3ac3 in claim_report /work/main/agent/syncer.c:617\n"
    "    #3 0x55f1782b5e1f in send_reports /work/main/agent/syncer.c:807\n"
    "    #4 0x7f77cc6a71f4 in start_thread nptl/pthread_create.c:442\n"
    "\n"
    "Indirect leak of 586 byte(s) in 1 object(s) allocated from:\n"
    "    #0 0x7f77cd0b83b7 in __interceptor_calloc asan_malloc_linux.cpp:77\n"
    "    #1 0x7f77ccf65b07  (/lib/x86_64-linux-gnu/libnng.so.1+0x1cb07)\n"
    "    #2 0x7f77ccf65cd8  (/lib/x86_64-linux-gnu/libnng.so.1+0x1ccd8)\n"
    "    #3 0x55f1782b3ac3 in claim_report /work/main/agent/syncer.c:617\n"
    "\n";

/* A pipe nng allocated in one of its threads and never reaped. */
static const char nng_pipe_leak[] =
    "Direct leak of 248 byte(s) in 1 object(s) allocated from:\n"
    "    #0 0x7f5c9d0b83b7 in __interceptor_calloc asan_malloc_linux.cpp:77\n"
    "    #1 0x7f5c9cfcbab9  (/lib/x86_64-linux-gnu/libnng.so.1+0x40ab9)\n"
    "    #2 0x7f5c9cfcbda5  (/lib/x86_64-linux-gnu/libnng.so.1+0x40da5)\n"
    "    #3 0x7f5c9c6a71f4 in start_thread nptl/pthread_create.c:442\n"
    "\n";

/* libraft 0.15's installSnapshotCb discarding an install at a stop: its
 * snapshot's bufs array (seen in test_wiped_node_rejoins_by_snapshot). */
static const char raft_bufs_leak[] =
    "Direct leak of 16 byte(s) in 1 object(s) allocated from:\n"
    "    #0 0x7f01c82b89cf in __interceptor_malloc asan_malloc_linux.cpp:69\n"
    "    #1 0x7f01c81af609  (/lib/x86_64-linux-gnu/libraft.so.2+0xe609)\n"
    "\n";

/* Any other block libraft allocated: not accepted. */
static const char raft_other_leak[] =
    "Direct leak of 64 byte(s) in 1 object(s) allocated from:\n"
    "    #0 0x7f01c82b89cf in __interceptor_malloc asan_malloc_linux.cpp:69\n"
    "    #1 0x7f01c81af5cb  (/lib/x86_64-linux-gnu/libraft.so.2+0xe5cb)\n"
    "\n";

/* popcast's own allocation, made in an nng callback thread: still ours. */
static const char own_leak[] =
    "Direct leak of 64 byte(s) in 1 object(s) allocated from:\n"
    "    #0 0x7f77cd0b83b7 in __interceptor_malloc asan_malloc_linux.cpp:69\n"
    "    #1 0x55f1782b4a10 in report_done /work/main/agent/syncer.c:700\n"
    "    #2 0x7f5c9cfcbda5  (/lib/x86_64-linux-gnu/libnng.so.1+0x40da5)\n"
    "    #3 0x7f5c9c6a71f4 in start_thread nptl/pthread_create.c:442\n"
    "\n";

static const char summary[] = "SUMMARY: AddressSanitizer: 698 byte(s) leaked in 2 allocation(s).\n";

static void write_log(const char *path, const char *const *parts)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (size_t i = 0; parts[i] != NULL; i++)
        assert_int_equal(fputs(parts[i], f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static pc_sanitizer_verdict verdict_of(const char *const *parts)
{
    char dir[400], path[512];
    pc_test_tmpdir(dir, sizeof(dir), "verdict");
    snprintf(path, sizeof(path), "%s/daemon.log", dir);
    write_log(path, parts);
    pc_sanitizer_verdict v = pc_test_sanitizer_verdict(path);
    unlink(path);
    rmdir(dir);
    return v;
}

static void test_clean_log(void **state)
{
    (void)state;
    const char *parts[] = {"INFO  agent: signal 15: shutting down\n", "INFO  agent: stopped\n",
                           NULL};
    assert_int_equal(verdict_of(parts), PC_SANITIZER_CLEAN);
}

static void test_nng_leaks_are_accepted(void **state)
{
    (void)state;
    const char *message[] = {log_head, nng_message_leak, summary, NULL};
    assert_int_equal(verdict_of(message), PC_SANITIZER_LIBRARY_LEAK);
    const char *both[] = {log_head, nng_pipe_leak, nng_message_leak, summary, NULL};
    assert_int_equal(verdict_of(both), PC_SANITIZER_LIBRARY_LEAK);
}

static void test_libraft_known_leak_only(void **state)
{
    (void)state;
    const char *known[] = {log_head, raft_bufs_leak, summary, NULL};
    assert_int_equal(verdict_of(known), PC_SANITIZER_LIBRARY_LEAK);
    const char *with_nng[] = {log_head, nng_pipe_leak, raft_bufs_leak, summary, NULL};
    assert_int_equal(verdict_of(with_nng), PC_SANITIZER_LIBRARY_LEAK);
    const char *other[] = {log_head, raft_other_leak, summary, NULL};
    assert_int_equal(verdict_of(other), PC_SANITIZER_REPORT);
    const char *mixed[] = {log_head, raft_bufs_leak, own_leak, summary, NULL};
    assert_int_equal(verdict_of(mixed), PC_SANITIZER_REPORT);
}

static void test_own_leak_fails(void **state)
{
    (void)state;
    const char *alone[] = {log_head, own_leak, summary, NULL};
    assert_int_equal(verdict_of(alone), PC_SANITIZER_REPORT);
    /* Among nng's leaks, before or after them. */
    const char *after[] = {log_head, nng_message_leak, own_leak, summary, NULL};
    assert_int_equal(verdict_of(after), PC_SANITIZER_REPORT);
    const char *before[] = {log_head, own_leak, nng_pipe_leak, summary, NULL};
    assert_int_equal(verdict_of(before), PC_SANITIZER_REPORT);
}

static void test_cut_report_fails(void **state)
{
    (void)state;
    /* No summary: the report did not end, so it was not read whole. */
    const char *parts[] = {log_head, nng_message_leak, NULL};
    assert_int_equal(verdict_of(parts), PC_SANITIZER_REPORT);
}

static void test_other_reports_fail(void **state)
{
    (void)state;
    const char *ubsan[] = {"agent/applier.c:120:5: runtime error: signed integer overflow\n", NULL};
    assert_int_equal(verdict_of(ubsan), PC_SANITIZER_REPORT);
    const char *asan[] = {"==1==ERROR: AddressSanitizer: heap-use-after-free on address 0x1\n",
                          NULL};
    assert_int_equal(verdict_of(asan), PC_SANITIZER_REPORT);
    /* An accepted leak report does not hide a UBSan report before it. */
    const char *mixed[] = {ubsan[0], log_head, nng_pipe_leak, summary, NULL};
    assert_int_equal(verdict_of(mixed), PC_SANITIZER_REPORT);
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clean_log),
        cmocka_unit_test(test_nng_leaks_are_accepted),
        cmocka_unit_test(test_libraft_known_leak_only),
        cmocka_unit_test(test_own_leak_fails),
        cmocka_unit_test(test_cut_report_fails),
        cmocka_unit_test(test_other_reports_fail),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
