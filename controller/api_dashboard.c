/* api_dashboard.c - the dashboard (docs/dashboard.md): a read-only page
 * and its assets, built into the binary (controller/dashboard/), served
 * without a token; the page asks the user for one and calls the API with
 * it. The answers forbid everything the page does not need (CSP): no
 * script, style or connection from elsewhere, no framing. */
#include <string.h>

#include "api_internal.h"
#include "dashboard_assets.h"

typedef struct asset {
    const char *name;
    const char *content_type;
    const unsigned char *data;
    const size_t *len;
} asset;

static const asset assets[] = {
    {"app.js", "text/javascript; charset=utf-8", pc_dashboard_app_js, &pc_dashboard_app_js_len},
    {"app.css", "text/css; charset=utf-8", pc_dashboard_app_css, &pc_dashboard_app_css_len},
    {"world.svg", "image/svg+xml", pc_dashboard_world_svg, &pc_dashboard_world_svg_len},
    {"icon.svg", "image/svg+xml", pc_dashboard_icon_svg, &pc_dashboard_icon_svg_len},
};

static const char *const headers[] = {
    "Content-Security-Policy",
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options",
    "nosniff",
    "Referrer-Policy",
    "no-referrer",
    "Cache-Control",
    "no-cache",
    NULL};

void api_get_dashboard(api_call *call)
{
    pc_httpd_reply(call->rq, 200, "text/html; charset=utf-8", pc_dashboard_index_html,
                   pc_dashboard_index_html_len, headers);
}

void api_get_dashboard_asset(api_call *call)
{
    const char *name = pc_route_param(call->match, "asset");
    for (size_t i = 0; i < sizeof(assets) / sizeof(assets[0]); i++)
        if (strcmp(assets[i].name, name) == 0) {
            pc_httpd_reply(call->rq, 200, assets[i].content_type, assets[i].data, *assets[i].len,
                           headers);
            return;
        }
    pc_httpd_error(call->rq, PC_E_NOTFOUND, "no dashboard asset %s", name);
}
