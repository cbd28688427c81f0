/* test_dashboard.c - the dashboard (docs/dashboard.md): served by the
 * controller without a token, with its security headers; GET /v1/fleet
 * places PoPs from pop_locations, and bad locations stop the controller at
 * start; and, in a real browser (Debian's chromium driven by
 * puppeteer-core, tests/browser/dashboard.test.mjs), the page shows every
 * agent and, after a deploy, the new version live on every agent without
 * a reload. The browser's screenshot is kept in the build tree
 * (test-artifacts/dashboard.png). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <setjmp.h>
#include <cmocka.h>

#include "harness.h"

static pc_test_env env;
static pc_test_controller ctl;
static pc_test_agent agents[2];

static int setup(void **state)
{
    (void)state;
    pc_test_env_init(&env);
    const char *flags[] = {"--pop-locations", "fra=50.11,8.68", "--pop-locations",
                           "iad=38.95,-77.45", NULL};
    pc_test_controller_start(&env, &ctl, flags);
    const char *fra[] = {"--pop", "fra", NULL};
    const char *iad[] = {"--pop", "iad", NULL};
    pc_test_agent_start_for(&env, &agents[0], "edge-fra-1", &ctl, fra);
    pc_test_agent_start_for(&env, &agents[1], "edge-iad-1", &ctl, iad);
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "version one");
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "web", src), 1);
    for (int i = 0; i < 2; i++)
        assert_true(pc_test_wait_version(&agents[i], "web", 1, PC_TEST_CONVERGE_TIMEOUT_MS));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++)
        pc_test_agent_stop(&agents[i]);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
    return 0;
}

/* The page and its assets: no token needed, the CSP on each, types
 * right; an unknown asset is 404. */
static void test_served_with_headers(void **state)
{
    (void)state;
    static const struct {
        const char *path, *type, *needle;
    } pages[] = {
        {"/dashboard", "text/html; charset=utf-8", "/dashboard/app.js"},
        {"/dashboard/app.js", "text/javascript; charset=utf-8", "/v1/watch"},
        {"/dashboard/app.css", "text/css; charset=utf-8", "#map"},
        {"/dashboard/world.svg", "image/svg+xml", "<path"},
    };
    for (size_t i = 0; i < sizeof(pages) / sizeof(pages[0]); i++) {
        pc_http_result r;
        pc_err err;
        assert_int_equal(
            pc_http_call(ctl.api_url, "GET", pages[i].path, NULL, NULL, 0, 5000, &r, &err), PC_OK);
        assert_int_equal(r.status, 200);
        assert_string_equal(pc_http_result_header(&r, "Content-Type"), pages[i].type);
        const char *csp = pc_http_result_header(&r, "Content-Security-Policy");
        assert_non_null(csp);
        assert_non_null(strstr(csp, "default-src 'none'"));
        assert_non_null(strstr(csp, "frame-ancestors 'none'"));
        assert_string_equal(pc_http_result_header(&r, "X-Content-Type-Options"), "nosniff");
        assert_non_null(strstr((const char *)r.body, pages[i].needle));
        pc_http_result_free(&r);
    }
    pc_http_result r;
    pc_err err;
    assert_int_equal(
        pc_http_call(ctl.api_url, "GET", "/dashboard/secret.txt", NULL, NULL, 0, 5000, &r, &err),
        PC_OK);
    assert_int_equal(r.status, 404);
    pc_http_result_free(&r);
    assert_int_equal(pc_http_call(ctl.api_url, "POST", "/dashboard", NULL, "x", 1, 5000, &r, &err),
                     PC_OK);
    assert_int_equal(r.status, 405);
    pc_http_result_free(&r);
}

/* GET /v1/fleet says where each PoP is, as configured. */
static void test_fleet_places_pops(void **state)
{
    (void)state;
    json_t *fleet = pc_test_controller_json(&env, &ctl, "/v1/fleet");
    assert_non_null(fleet);
    json_t *pops = json_object_get(fleet, "pops");
    assert_int_equal(json_array_size(pops), 2);
    json_t *fra = json_array_get(pops, 0);
    assert_string_equal(json_string_value(json_object_get(fra, "pop")), "fra");
    assert_float_equal(json_real_value(json_object_get(fra, "lat")), 50.11, 1e-9);
    assert_float_equal(json_real_value(json_object_get(fra, "lon")), 8.68, 1e-9);
    json_t *iad = json_array_get(pops, 1);
    assert_float_equal(json_real_value(json_object_get(iad, "lon")), -77.45, 1e-9);
    json_decref(fleet);
}

/* Starts a controller with pop_locations a (and b, if not NULL); it must
 * stop at start, naming pop_locations. */
static void expect_refused(int n, const char *a, const char *b)
{
    char dir[400], log[450];
    snprintf(dir, sizeof(dir), "%s/bad-%d", env.root, n);
    snprintf(log, sizeof(log), "%s/bad-%d.log", env.root, n);
    char *argv[] = {getenv("POPCAST_CONTROLLER_BIN"),
                    "--data-dir",
                    dir,
                    "--signing-key",
                    env.key_path,
                    "--allow-plaintext",
                    "--api-listen",
                    "http://127.0.0.1:0",
                    "--pop-locations",
                    (char *)a,
                    b ? "--pop-locations" : NULL,
                    (char *)b,
                    NULL};
    pc_proc *p = pc_proc_spawn("controller", argv, log);
    if (!pc_proc_wait_exit(p, PC_TEST_START_TIMEOUT_MS))
        fail_msg("a controller with pop_locations %s did not stop", a);
    int status = pc_proc_stop(p);
    pc_proc_free(p);
    size_t len = 0;
    char *text = pc_test_read_file(log, &len);
    /* Exit 1 with the reason (a sanitizer's report would be a crash). */
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 1 || text == NULL ||
        strstr(text, "pop_locations") == NULL)
        fail_msg("pop_locations %s: status %d: %s", a, status, text ? text : "(no log)");
    free(text);
}

/* A location that is not POP=LAT,LON within range, or a PoP given twice,
 * stops the controller at start, naming it. */
static void test_bad_locations_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {"fra",        "fra=50.11",  "fra=91,8",     "fra=50,181",
                                      "fra=0x10,8", "fra=nan,8",  "Fra Main=1,2", "=1,2",
                                      "fra=1,2,3",  "fra=1e400,2"};
    int n = 0;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_refused(n++, bad[i], NULL);
    expect_refused(n++, "fra=1,2", "fra=3,4");
}

/* The page in chromium: every agent, then a deploy shown live on every
 * agent without a reload. */
static void test_in_a_browser(void **state)
{
    (void)state;
    const char *src = getenv("POPCAST_SOURCE_DIR");
    const char *artifacts = getenv("POPCAST_TEST_ARTIFACTS");
    assert_non_null(src);
    assert_non_null(artifacts);
    if (!pc_test_npm_package("puppeteer-core")) {
        skip();
        return;
    }
    char script[600], shot[600], log[450];
    snprintf(script, sizeof(script), "%s/tests/browser/dashboard.test.mjs", src);
    mkdir(artifacts, 0755);
    snprintf(shot, sizeof(shot), "%s/dashboard.png", artifacts);
    unlink(shot);
    snprintf(log, sizeof(log), "%s/browser.log", env.root);
    char *argv[] = {"/usr/bin/env", "node", script, ctl.api_url, env.token_path,
                    "web",          "2",    shot,   NULL};
    pc_proc *p = pc_proc_spawn("browser", argv, log);
    /* Bounded: the script bounds each of its waits too (60 s). */
    bool exited = pc_proc_wait_exit(p, 300000);
    int status = pc_proc_stop(p);
    pc_proc_free(p);
    size_t len = 0;
    char *out = pc_test_read_file(log, &len);
    if (!exited || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("the browser test failed (exit %d): %s",
                 WIFEXITED(status) ? WEXITSTATUS(status) : -1, out ? out : "(no output)");
    assert_non_null(strstr(out, "version 2 shown live on 2/2 agents without a reload"));
    free(out);
    unsigned char magic[8] = {0};
    FILE *f = fopen(shot, "rb");
    assert_non_null(f);
    assert_int_equal(fread(magic, 1, sizeof(magic), f), sizeof(magic));
    fclose(f);
    assert_memory_equal(magic, "\x89PNG\r\n\x1a\n", 8);
    printf("screenshot: %s\n", shot);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_served_with_headers),
        cmocka_unit_test(test_fleet_places_pops),
        cmocka_unit_test(test_bad_locations_refused),
        cmocka_unit_test(test_in_a_browser),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
