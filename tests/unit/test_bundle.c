/* test_bundle.c - the bundle archive reader refuses anything unsafe,
 * packing is deterministic, and .popcastignore leaves out what it names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "bundle.h"
#include "harness.h"
#include "names.h"
#include "popcast.pb-c.h"

/* Packs an archive by hand, bypassing the packer's own checks. */
static uint8_t *raw_archive(const char *entrypoint, const char *const *paths, size_t n, size_t *len)
{
    Popcast__BundleArchive a = POPCAST__BUNDLE_ARCHIVE__INIT;
    Popcast__BundleFile files[16], *ptrs[16];
    a.entrypoint = (char *)entrypoint;
    for (size_t i = 0; i < n; i++) {
        popcast__bundle_file__init(&files[i]);
        files[i].path = (char *)paths[i];
        files[i].content.data = (uint8_t *)"x";
        files[i].content.len = 1;
        ptrs[i] = &files[i];
    }
    a.files = ptrs;
    a.n_files = n;
    *len = popcast__bundle_archive__get_packed_size(&a);
    uint8_t *buf = malloc(*len + 1);
    popcast__bundle_archive__pack(&a, buf);
    return buf;
}

static int open_raw(const char *entrypoint, const char *const *paths, size_t n)
{
    size_t len;
    uint8_t *buf = raw_archive(entrypoint, paths, n, &len);
    pc_bundle *b = NULL;
    pc_err err;
    int rc = pc_bundle_open(buf, len, &b, &err);
    pc_bundle_free(b);
    free(buf);
    return rc;
}

static void test_single_file_round_trip(void **state)
{
    uint8_t *buf;
    size_t len;
    pc_err err;
    assert_int_equal(pc_bundle_pack_single("app.lua", (const uint8_t *)"code", 4, &buf, &len, &err),
                     PC_OK);
    pc_bundle *b;
    assert_int_equal(pc_bundle_open(buf, len, &b, &err), PC_OK);
    assert_string_equal(pc_bundle_entrypoint(b), "app.lua");
    const uint8_t *data;
    size_t dlen;
    assert_int_equal(pc_bundle_file(b, "app.lua", &data, &dlen), PC_OK);
    assert_int_equal(dlen, 4);
    assert_memory_equal(data, "code", 4);
    assert_int_equal(pc_bundle_file(b, "other.lua", &data, &dlen), PC_E_NOTFOUND);
    pc_bundle_free(b);
    free(buf);
}

static void test_unsafe_paths_are_refused(void **state)
{
    const char *bad[] = {"/etc/passwd", "../x",       "a/../../x",   "a//b", "a/",  ".",
                         "a/./b",       "with space", "back\\slash", "",     "a\nb"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *paths[] = {"main.lua", bad[i]};
        assert_int_equal(open_raw("main.lua", paths, 2), PC_E_INVALID);
        assert_false(pc_bundle_path_valid(bad[i]));
    }
    char long_path[400];
    memset(long_path, 'a', sizeof(long_path) - 1);
    long_path[sizeof(long_path) - 1] = '\0';
    const char *paths[] = {"main.lua", long_path};
    assert_int_equal(open_raw("main.lua", paths, 2), PC_E_INVALID);
    assert_true(pc_bundle_path_valid("lib/util-2.lua"));
}

static void test_entrypoint_must_be_a_file(void **state)
{
    const char *paths[] = {"main.lua"};
    assert_int_equal(open_raw("missing.lua", paths, 1), PC_E_INVALID);
    assert_int_equal(open_raw("", paths, 1), PC_E_INVALID);
    assert_int_equal(open_raw("../main.lua", paths, 1), PC_E_INVALID);
    assert_int_equal(open_raw("main.lua", paths, 0), PC_E_INVALID);
    assert_int_equal(open_raw("main.lua", paths, 1), PC_OK);
}

static void test_duplicate_paths_are_refused(void **state)
{
    const char *paths[] = {"main.lua", "b.lua", "main.lua"};
    assert_int_equal(open_raw("main.lua", paths, 3), PC_E_INVALID);
}

static void test_garbage_is_refused(void **state)
{
    srand(7);
    uint8_t buf[512];
    for (int round = 0; round < 2000; round++) {
        size_t len = (size_t)(rand() % (int)sizeof(buf));
        for (size_t i = 0; i < len; i++)
            buf[i] = (uint8_t)rand();
        pc_bundle *b = NULL;
        int rc = pc_bundle_open(buf, len, &b, NULL);
        /* Random bytes essentially never form a valid archive; if they
         * do, the result must still satisfy every rule. */
        if (rc == PC_OK) {
            assert_true(pc_bundle_path_valid(pc_bundle_entrypoint(b)));
            pc_bundle_free(b);
        }
    }
    pc_bundle *b = NULL;
    assert_int_not_equal(pc_bundle_open(NULL, 0, &b, NULL), PC_OK);
    assert_null(b);
}

static void test_pack_dir_is_deterministic_and_safe(void **state)
{
    pc_test_init();
    char dir[256], path[400];
    pc_test_tmpdir(dir, sizeof(dir), "bundle");
    snprintf(path, sizeof(path), "%s/main.lua", dir);
    pc_test_write_file(path, "return 1", 8);
    snprintf(path, sizeof(path), "%s/lib", dir);
    mkdir(path, 0700);
    snprintf(path, sizeof(path), "%s/lib/z.lua", dir);
    pc_test_write_file(path, "z", 1);
    snprintf(path, sizeof(path), "%s/lib/a.txt", dir);
    pc_test_write_file(path, "a", 1);
    uint8_t *a, *b;
    size_t alen, blen;
    pc_err err;
    assert_int_equal(pc_bundle_pack_dir(dir, NULL, 1 << 20, &a, &alen, &err), PC_OK);
    assert_int_equal(pc_bundle_pack_dir(dir, NULL, 1 << 20, &b, &blen, &err), PC_OK);
    assert_int_equal(alen, blen);
    assert_memory_equal(a, b, alen);
    pc_bundle *bundle;
    assert_int_equal(pc_bundle_open(a, alen, &bundle, &err), PC_OK);
    assert_int_equal(pc_bundle_file_count(bundle), 3);
    assert_int_equal(pc_bundle_file(bundle, "lib/a.txt", NULL, NULL), PC_OK);
    pc_bundle_free(bundle);
    free(a);
    free(b);
    /* Size limit, missing entrypoint, symlinks. */
    assert_int_equal(pc_bundle_pack_dir(dir, NULL, 4, &a, &alen, &err), PC_E_TOO_LARGE);
    assert_int_equal(pc_bundle_pack_dir(dir, "nope.lua", 1 << 20, &a, &alen, &err), PC_E_INVALID);
    snprintf(path, sizeof(path), "%s/link", dir);
    assert_int_equal(symlink("/etc/passwd", path), 0);
    assert_int_equal(pc_bundle_pack_dir(dir, NULL, 1 << 20, &a, &alen, &err), PC_E_INVALID);
    pc_test_rm_rf(dir);
}

/* Writes dir/rel (making its directories) with content. */
static void put(const char *dir, const char *rel, const char *content)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    for (char *slash = strchr(path + strlen(dir) + 1, '/'); slash != NULL;
         slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        mkdir(path, 0700);
        *slash = '/';
    }
    pc_test_write_file(path, content, strlen(content));
}

/* The paths a packed directory holds, joined by spaces, or the error. */
static void packed(const char *dir, char *out, size_t cap)
{
    uint8_t *a = NULL;
    size_t alen = 0;
    pc_err err;
    if (pc_bundle_pack_dir(dir, NULL, 1 << 20, &a, &alen, &err) != PC_OK) {
        snprintf(out, cap, "error: %s", err.msg);
        return;
    }
    pc_bundle *b = NULL;
    assert_int_equal(pc_bundle_open(a, alen, &b, &err), PC_OK);
    out[0] = '\0';
    for (size_t i = 0; i < pc_bundle_file_count(b); i++) {
        const char *path;
        const uint8_t *data;
        size_t len;
        pc_bundle_file_at(b, i, &path, &data, &len);
        size_t used = strlen(out);
        snprintf(out + used, cap - used, "%s%s", used ? " " : "", path);
    }
    pc_bundle_free(b);
    free(a);
}

/* .git never goes into a bundle, nor .popcastignore, nor what its
 * patterns name (docs/cli.md ".popcastignore"). */
static void test_popcastignore(void **state)
{
    (void)state;
    pc_test_init();
    char dir[256], got[2048];
    pc_test_tmpdir(dir, sizeof(dir), "ignore");
    put(dir, "main.lua", "return 1");
    put(dir, "lib/util.lua", "u");
    put(dir, ".git/config", "[core]");
    put(dir, "lib/.git/HEAD", "ref");
    put(dir, "debug.log", "x");
    put(dir, "lib/deep/trace.log", "x");
    put(dir, "node_modules/m/index.js", "x");
    put(dir, "build/out.js", "x");
    put(dir, "lib/build/out.js", "kept: the anchored pattern names the top one");
    put(dir, "notes", "a file named like a directory pattern");
    /* No .popcastignore: only .git is left out. */
    packed(dir, got, sizeof(got));
    assert_string_equal(got, "build/out.js debug.log lib/build/out.js lib/deep/trace.log "
                             "lib/util.lua main.lua node_modules/m/index.js notes");
    put(dir, ".popcastignore",
        "# build output\n\n*.log\nnode_modules/\n/build/out.js\nnotes/\n   \n");
    packed(dir, got, sizeof(got));
    assert_string_equal(got, "lib/build/out.js lib/util.lua main.lua notes");
    /* Refused, with the line named: a re-include, an empty anchor. */
    put(dir, ".popcastignore", "*.log\n!keep.log\n");
    packed(dir, got, sizeof(got));
    assert_non_null(strstr(got, "error: "));
    assert_non_null(strstr(got, ".popcastignore:2: '!'"));
    put(dir, ".popcastignore", "/\n");
    packed(dir, got, sizeof(got));
    assert_non_null(strstr(got, ".popcastignore:1: an empty pattern"));
    /* A line too long to be a pattern. */
    char longline[1200];
    memset(longline, 'a', sizeof(longline) - 2);
    longline[sizeof(longline) - 2] = '\n';
    longline[sizeof(longline) - 1] = '\0';
    put(dir, ".popcastignore", longline);
    packed(dir, got, sizeof(got));
    assert_non_null(strstr(got, "a line longer than"));
    /* Leaving the entrypoint out is an error, not an empty bundle. */
    put(dir, ".popcastignore", "*.lua\n");
    packed(dir, got, sizeof(got));
    assert_non_null(strstr(got, "entrypoint main.lua is not a file"));
    pc_test_rm_rf(dir);
}

static void test_names(void **state)
{
    assert_true(pc_tenant_name_valid("acme-1"));
    assert_false(pc_tenant_name_valid("Acme"));
    assert_false(pc_tenant_name_valid(""));
    assert_false(pc_tenant_name_valid(NULL));
    assert_false(pc_tenant_name_valid("a.b"));
    char name[80];
    memset(name, 'a', 63);
    name[63] = '\0';
    assert_true(pc_tenant_name_valid(name));
    name[63] = 'a';
    name[64] = '\0';
    assert_false(pc_tenant_name_valid(name));
    assert_true(pc_id_valid("edge-01.fra"));
    assert_false(pc_id_valid("a b"));
    assert_true(pc_runtime_name_valid("lua"));
    assert_false(pc_runtime_name_valid("Lua"));
    assert_true(pc_idempotency_key_valid("0f3a9c2e-7b1d-4e55-9a10-2c3b4d5e6f70"));
    assert_true(pc_idempotency_key_valid("release-2026-12-03.1:retry_2"));
    assert_false(pc_idempotency_key_valid(""));
    assert_false(pc_idempotency_key_valid(NULL));
    assert_false(pc_idempotency_key_valid("a b"));
    assert_false(pc_idempotency_key_valid("a/b")); /* '/' separates the store's key parts */
    assert_false(pc_idempotency_key_valid("k\xc3\xa9"));
    memset(name, 'k', 64);
    name[64] = '\0';
    assert_true(pc_idempotency_key_valid(name));
    name[64] = 'k';
    name[65] = '\0';
    assert_false(pc_idempotency_key_valid(name));
    /* A change's message: one line of valid UTF-8, at most 512 bytes. */
    assert_true(pc_change_message_valid(""));
    assert_true(pc_change_message_valid("Fix login \xe2\x9c\x93, caf\xc3\xa9"));
    assert_true(pc_change_message_valid("\xc2\xa0no-break space")); /* U+00A0, past C1 */
    assert_true(pc_change_message_valid("\xf0\x9f\x9a\x80"));       /* U+1F680 */
    assert_false(pc_change_message_valid(NULL));
    assert_false(pc_change_message_valid("tab\there"));
    assert_false(pc_change_message_valid("two\nlines"));
    assert_false(pc_change_message_valid("del\x7f"));
    assert_false(pc_change_message_valid("c1 \xc2\x85"));      /* U+0085 */
    assert_false(pc_change_message_valid("cut \xe2\x9c"));     /* a sequence cut short */
    assert_false(pc_change_message_valid("\xc0\xaf"));         /* overlong '/' */
    assert_false(pc_change_message_valid("\xed\xa0\x80"));     /* a surrogate */
    assert_false(pc_change_message_valid("\xf4\x90\x80\x80")); /* past U+10FFFF */
    char message[PC_CHANGE_MESSAGE_MAX + 2];
    memset(message, 'm', PC_CHANGE_MESSAGE_MAX);
    message[PC_CHANGE_MESSAGE_MAX] = '\0';
    assert_true(pc_change_message_valid(message));
    message[PC_CHANGE_MESSAGE_MAX] = 'm';
    message[PC_CHANGE_MESSAGE_MAX + 1] = '\0';
    assert_false(pc_change_message_valid(message));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_file_round_trip),
        cmocka_unit_test(test_unsafe_paths_are_refused),
        cmocka_unit_test(test_entrypoint_must_be_a_file),
        cmocka_unit_test(test_duplicate_paths_are_refused),
        cmocka_unit_test(test_garbage_is_refused),
        cmocka_unit_test(test_pack_dir_is_deterministic_and_safe),
        cmocka_unit_test(test_popcastignore),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
