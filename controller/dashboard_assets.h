/* dashboard_assets.h - controller/dashboard/ as built into the controller
 * (api_dashboard.c serves them under /dashboard), each NUL-terminated
 * after len bytes. */
#ifndef PC_DASHBOARD_ASSETS_H
#define PC_DASHBOARD_ASSETS_H

#include <stddef.h>

extern const unsigned char pc_dashboard_index_html[];
extern const size_t pc_dashboard_index_html_len;
extern const unsigned char pc_dashboard_app_js[];
extern const size_t pc_dashboard_app_js_len;
extern const unsigned char pc_dashboard_app_css[];
extern const size_t pc_dashboard_app_css_len;
extern const unsigned char pc_dashboard_world_svg[];
extern const size_t pc_dashboard_world_svg_len;
extern const unsigned char pc_dashboard_icon_svg[];
extern const size_t pc_dashboard_icon_svg_len;

#endif
