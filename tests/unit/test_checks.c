/* test_checks.c - the debug checks of thread and lock rules: who owns a
 * thread-bound object, who holds a lock, and that a broken rule stops the
 * process when the checks are built in (POPCAST_DEBUG_CHECKS) and costs
 * nothing when they are not. */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "checks.h"

typedef struct probe {
    pc_thread_owner *owner;
    pc_mutex *mutex;
    bool is_owner, holds;
} probe;

static void *from_other_thread(void *arg)
{
    probe *p = arg;
    p->is_owner = pc_thread_is_owner(p->owner);
    p->holds = pc_mutex_held(p->mutex);
    return NULL;
}

static void test_owner_and_holder(void **state)
{
    pc_thread_owner owner = {0};
    pc_mutex m;
    pc_mutex_init(&m);
    /* No owner yet: anyone may call. */
    assert_true(pc_thread_is_owner(&owner));
    pc_thread_own(&owner);
    assert_true(pc_thread_is_owner(&owner));
    assert_false(pc_mutex_held(&m));
    pc_mutex_lock(&m);
    assert_true(pc_mutex_held(&m));
    probe p = {&owner, &m, true, true};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, from_other_thread, &p), 0);
    pthread_join(t, NULL);
    assert_false(p.is_owner);
    assert_false(p.holds);
    pc_mutex_unlock(&m);
    assert_false(pc_mutex_held(&m));
    pc_mutex_destroy(&m);
}

static void test_broken_rule(void **state)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        pc_mutex m;
        pc_mutex_init(&m);
        /* stderr would show the report in the test log: expected here. */
        PC_CHECK_HELD(&m);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
#ifdef POPCAST_DEBUG_CHECKS
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
#else
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_owner_and_holder),
        cmocka_unit_test(test_broken_rule),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
