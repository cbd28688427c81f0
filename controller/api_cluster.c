/* api_cluster.c - the controller cluster's membership (docs/api.md
 * "Cluster"). */
#include <stdlib.h>

#include "api_bodies.h"
#include "api_internal.h"

#define NODE_BODY_MAX 4096

void api_get_cluster(api_call *call)
{
    pc_httpd_reply_json(call->rq, 200, pc_cluster_info_json(call->api->opt.cluster), NULL);
}

json_t *api_cluster_change_json(pc_api *api, const pc_change *c, const pc_change_result *r)
{
    pc_cluster_refresh(api->opt.cluster); /* on the loop: the answer shows the change */
    return pc_cluster_info_json(api->opt.cluster);
}

static void node_body(void *arg, pc_httpd_req *rq, int rc, uint8_t *body, size_t len)
{
    pc_api *api = arg;
    if (rc != PC_OK)
        return;
    pc_change *c = pc_change_new(PC_CHANGE_ADD_NODE, NULL);
    pc_err err;
    if (c == NULL) {
        pc_httpd_error(rq, PC_E_NOMEM, "out of memory");
    } else if (pc_api_parse_node(body, len, &c->u.node.id, c->u.node.raft_address,
                                 sizeof(c->u.node.raft_address), c->u.node.api_url,
                                 sizeof(c->u.node.api_url), &err) != PC_OK) {
        pc_change_free(c);
        pc_httpd_error(rq, PC_E_INVALID, "%s", err.msg);
    } else {
        api_submit(api, rq, c);
    }
    free(body);
}

void api_post_node(api_call *call)
{
    pc_httpd_read_body(call->rq, NODE_BODY_MAX, node_body, call->api);
}

void api_delete_node(api_call *call)
{
    uint64_t id = 0;
    if (api_parse_u64(pc_route_param(call->match, "id"), &id) != 0 || id == 0) {
        pc_httpd_error(call->rq, PC_E_INVALID, "node id must be a number >= 1");
        return;
    }
    pc_change *c = pc_change_new(PC_CHANGE_REMOVE_NODE, NULL);
    if (c == NULL) {
        pc_httpd_error(call->rq, PC_E_NOMEM, "out of memory");
        return;
    }
    c->u.node.id = id;
    api_submit(call->api, call->rq, c);
}
