/* test_metrics.c - common/metrics.h: counters and gauges by name and
 * labels, the exact Prometheus text and JSON renderings (a name's series
 * stay together, in the order they were created), NULL handling, and a
 * registry of many series (one per tenant, as an agent with thousands of
 * tenants has), latency histograms, and families described before their
 * first series. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics.h"

static void test_counters_gauges_labels(void **state)
{
    pc_metrics *m = pc_metrics_new();
    assert_non_null(m);
    pc_metric *c = pc_metrics_counter(m, "jobs_total", NULL, "jobs done");
    assert_non_null(c);
    assert_int_equal(pc_metrics_get(m, "jobs_total", NULL), 0);
    pc_metric_add(c, 3);
    pc_metrics_inc(m, "jobs_total", NULL);
    assert_int_equal(pc_metrics_get(m, "jobs_total", NULL), 4);
    /* The same name and labels is the same metric; NULL labels == "". */
    assert_ptr_equal(pc_metrics_counter(m, "jobs_total", "", NULL), c);
    assert_int_equal(pc_metrics_get(m, "jobs_total", ""), 4);
    /* Labels make separate series. */
    pc_metric *a = pc_metrics_counter(m, "jobs_total", "kind=\"a\"", NULL);
    assert_ptr_not_equal(a, c);
    pc_metrics_inc(m, "jobs_total", "kind=\"a\"");
    assert_int_equal(pc_metrics_get(m, "jobs_total", "kind=\"a\""), 1);
    assert_int_equal(pc_metrics_get(m, "jobs_total", NULL), 4);
    /* Gauges are set. */
    pc_metric *g = pc_metrics_gauge(m, "queue", NULL, "queued");
    pc_metric_set(g, 42);
    pc_metric_set(g, 7);
    assert_int_equal(pc_metrics_get(m, "queue", NULL), 7);
    /* Unknown metrics read 0 and are not created by reading. */
    assert_int_equal(pc_metrics_get(m, "nope", NULL), 0);
    assert_int_equal(pc_metrics_get(m, "jobs_total", "kind=\"b\""), 0);
    char *text = pc_metrics_render_text(m);
    assert_null(strstr(text, "nope"));
    assert_null(strstr(text, "kind=\"b\""));
    free(text);
    pc_metrics_free(m);
}

static void test_null_registry(void **state)
{
    assert_null(pc_metrics_counter(NULL, "x", NULL, NULL));
    assert_null(pc_metrics_gauge(NULL, "x", NULL, NULL));
    pc_metrics_inc(NULL, "x", NULL);
    pc_metric_add(NULL, 1);
    pc_metric_set(NULL, 1);
    assert_int_equal(pc_metrics_get(NULL, "x", NULL), 0);
    pc_metrics_free(NULL);
}

/* Series created interleaved are rendered grouped by name, each name with
 * its HELP (when given) and TYPE once, in creation order. */
static void test_render(void **state)
{
    pc_metrics *m = pc_metrics_new();
    pc_metric_add(pc_metrics_counter(m, "req_total", "code=\"200\"", "requests"), 5);
    pc_metric_set(pc_metrics_gauge(m, "live", NULL, NULL), 2);
    pc_metric_add(pc_metrics_counter(m, "req_total", "code=\"500\"", NULL), 1);
    pc_metric_add(pc_metrics_counter(m, "drops_total", NULL, "drops"), 9);
    pc_metric_add(pc_metrics_counter(m, "req_total", "code=\"404\"", NULL), 3);
    char *text = pc_metrics_render_text(m);
    assert_string_equal(text, "# HELP req_total requests\n"
                              "# TYPE req_total counter\n"
                              "req_total{code=\"200\"} 5\n"
                              "req_total{code=\"500\"} 1\n"
                              "req_total{code=\"404\"} 3\n"
                              "# TYPE live gauge\n"
                              "live 2\n"
                              "# HELP drops_total drops\n"
                              "# TYPE drops_total counter\n"
                              "drops_total 9\n");
    free(text);
    json_t *j = pc_metrics_render_json(m);
    char *s = json_dumps(j, JSON_COMPACT);
    assert_string_equal(s, "{\"req_total{code=\\\"200\\\"}\":5,\"req_total{code=\\\"500\\\"}\":1,"
                           "\"req_total{code=\\\"404\\\"}\":3,\"live\":2,\"drops_total\":9}");
    free(s);
    json_decref(j);
    pc_metrics_free(m);
}

/* Thousands of series per name (one per tenant): each is found again, and
 * the rendering keeps them together in creation order. */
static void test_many_series(void **state)
{
    enum { TENANTS = 4000 };
    static const char *names[] = {"popcast_live_version", "popcast_requests_total",
                                  "popcast_limit_total"};
    pc_metrics *m = pc_metrics_new();
    static pc_metric *seen[3][TENANTS];
    char labels[64];
    for (int t = 0; t < TENANTS; t++)
        for (int k = 0; k < 3; k++) {
            snprintf(labels, sizeof(labels), "tenant=\"t%d\"", t);
            seen[k][t] = k == 0 ? pc_metrics_gauge(m, names[k], labels, "live version")
                                : pc_metrics_counter(m, names[k], labels, NULL);
            assert_non_null(seen[k][t]);
            pc_metric_add(seen[k][t], (uint64_t)(t * 3 + k));
        }
    for (int t = 0; t < TENANTS; t++)
        for (int k = 0; k < 3; k++) {
            snprintf(labels, sizeof(labels), "tenant=\"t%d\"", t);
            pc_metric *again = k == 0 ? pc_metrics_gauge(m, names[k], labels, NULL)
                                      : pc_metrics_counter(m, names[k], labels, NULL);
            assert_ptr_equal(again, seen[k][t]);
            assert_int_equal(pc_metrics_get(m, names[k], labels), (uint64_t)(t * 3 + k));
        }
    char *text = pc_metrics_render_text(m);
    const char *p = text;
    for (int k = 0; k < 3; k++) {
        char line[128];
        snprintf(line, sizeof(line), "# TYPE %s %s\n", names[k], k == 0 ? "gauge" : "counter");
        p = strstr(p, line);
        assert_non_null(p);
        p += strlen(line);
        /* The name's block: every series line, in creation order, up to
         * the next comment line (or the end). */
        for (int t = 0; t < TENANTS; t++) {
            int n = snprintf(line, sizeof(line), "%s{tenant=\"t%d\"} %d\n", names[k], t, t * 3 + k);
            assert_memory_equal(p, line, (size_t)n);
            p += n;
        }
        assert_true(*p == '\0' || *p == '#');
    }
    assert_int_equal(*p, '\0');
    free(text);
    json_t *j = pc_metrics_render_json(m);
    assert_int_equal(json_object_size(j), 3 * TENANTS);
    assert_int_equal(
        json_integer_value(json_object_get(j, "popcast_limit_total{tenant=\"t3999\"}")),
        3999 * 3 + 2);
    json_decref(j);
    pc_metrics_free(m);
}

/* Buckets are cumulative, the count is the +Inf bucket, the sum is in
 * seconds; an observation on a bound falls in that bound's bucket. */
static void test_histogram(void **state)
{
    (void)state;
    pc_metrics *m = pc_metrics_new();
    pc_histogram *h = pc_metrics_latency(m, "op_seconds", "kind=\"a\"", "how long ops take");
    assert_non_null(h);
    assert_ptr_equal(pc_metrics_latency(m, "op_seconds", "kind=\"a\"", NULL), h);
    pc_histogram_observe_us(h, 1000);      /* le 0.001 */
    pc_histogram_observe_us(h, 1001);      /* le 0.0025 */
    pc_histogram_observe_us(h, 700000);    /* le 1 */
    pc_histogram_observe_us(h, 120000000); /* +Inf */
    pc_histogram_observe_us(NULL, 5);
    pc_histogram_observe_us(pc_metrics_latency(m, "plain_seconds", NULL, "no labels"), 0);
    char *text = pc_metrics_render_text(m);
    assert_non_null(strstr(text, "# HELP op_seconds how long ops take\n"
                                 "# TYPE op_seconds histogram\n"
                                 "op_seconds_bucket{kind=\"a\",le=\"0.001\"} 1\n"
                                 "op_seconds_bucket{kind=\"a\",le=\"0.0025\"} 2\n"
                                 "op_seconds_bucket{kind=\"a\",le=\"0.005\"} 2\n"));
    assert_non_null(strstr(text, "op_seconds_bucket{kind=\"a\",le=\"0.5\"} 2\n"
                                 "op_seconds_bucket{kind=\"a\",le=\"1\"} 3\n"));
    assert_non_null(strstr(text, "op_seconds_bucket{kind=\"a\",le=\"60\"} 3\n"
                                 "op_seconds_bucket{kind=\"a\",le=\"+Inf\"} 4\n"
                                 "op_seconds_sum{kind=\"a\"} 120.702001\n"
                                 "op_seconds_count{kind=\"a\"} 4\n"));
    assert_non_null(strstr(text, "plain_seconds_bucket{le=\"0.001\"} 1\n"));
    assert_non_null(strstr(text, "plain_seconds_sum 0.000000\nplain_seconds_count 1\n"));
    free(text);
    json_t *j = pc_metrics_render_json(m);
    assert_int_equal(json_integer_value(json_object_get(j, "op_seconds_count{kind=\"a\"}")), 4);
    assert_true(json_real_value(json_object_get(j, "op_seconds_sum{kind=\"a\"}")) > 120.7);
    json_decref(j);
    pc_metrics_free(m);
}

/* A family's help is its own, whichever series gives it; a described
 * family shows its help and type before it has a series, and only once
 * after. */
static void test_family_help(void **state)
{
    (void)state;
    pc_metrics *m = pc_metrics_new();
    pc_metrics_inc(m, "late_total", "reason=\"x\"");
    pc_metric_add(pc_metrics_counter(m, "late_total", "reason=\"y\"", "given second"), 2);
    pc_metrics_describe(m, "refused_total", "refusals, by reason");
    char *text = pc_metrics_render_text(m);
    assert_string_equal(text, "# HELP late_total given second\n"
                              "# TYPE late_total counter\n"
                              "late_total{reason=\"x\"} 1\n"
                              "late_total{reason=\"y\"} 2\n"
                              "# HELP refused_total refusals, by reason\n"
                              "# TYPE refused_total counter\n");
    free(text);
    pc_metrics_inc(m, "refused_total", "reason=\"bad\"");
    text = pc_metrics_render_text(m);
    assert_non_null(strstr(text, "# HELP refused_total refusals, by reason\n"
                                 "# TYPE refused_total counter\n"
                                 "refused_total{reason=\"bad\"} 1\n"));
    assert_null(strstr(strstr(text, "# TYPE refused_total") + 1, "# TYPE refused_total"));
    free(text);
    pc_metrics_describe(NULL, "x", "y");
    pc_metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counters_gauges_labels),
        cmocka_unit_test(test_null_registry),
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_many_series),
        cmocka_unit_test(test_histogram),
        cmocka_unit_test(test_family_help),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
