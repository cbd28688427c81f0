/* api_bodies.c - JSON request bodies (see api_bodies.h). */
#include "api_bodies.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

/* The body as a JSON object, or NULL with err set. */
static json_t *parse_object(const uint8_t *body, size_t len, pc_err *err)
{
    if (len == 0) {
        pc_err_set(err, PC_E_INVALID, "request body must be a JSON object");
        return NULL;
    }
    json_error_t jerr;
    json_t *root = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        pc_err_set(err, PC_E_INVALID, "malformed JSON at line %d column %d: %s", jerr.line,
                   jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        pc_err_set(err, PC_E_INVALID, "request body must be a JSON object");
        return NULL;
    }
    return root;
}

int pc_api_parse_rollback(const uint8_t *body, size_t len, uint64_t *version, pc_err *err)
{
    json_t *root = parse_object(body, len, err);
    if (root == NULL)
        return PC_E_INVALID;
    int rc = PC_OK;
    json_t *v = json_object_get(root, "version");
    const char *key;
    json_t *val;
    int unknown = 0;
    json_object_foreach(root, key, val) unknown |= strcmp(key, "version") != 0;
    if (unknown)
        rc = pc_err_set(err, PC_E_INVALID, "only the field \"version\" is allowed");
    else if (!json_is_integer(v) || json_integer_value(v) < 1)
        rc = pc_err_set(err, PC_E_INVALID,
                        "\"version\" must be an integer >= 1 (the version to roll back to)");
    else
        *version = (uint64_t)json_integer_value(v);
    json_decref(root);
    return rc;
}

int pc_api_parse_node(const uint8_t *body, size_t len, uint64_t *id, char *raft_address,
                      size_t raft_cap, char *api_url, size_t api_cap, pc_err *err)
{
    json_t *root = parse_object(body, len, err);
    if (root == NULL)
        return PC_E_INVALID;
    json_error_t jerr;
    json_int_t n = 0;
    const char *raft = NULL, *url = NULL;
    int rc = PC_OK;
    if (json_unpack_ex(root, &jerr, JSON_STRICT, "{s:I,s:s,s:s}", "id", &n, "raft_address", &raft,
                       "api_url", &url) != 0 ||
        n < 1 || raft[0] == '\0' || strlen(raft) >= raft_cap || strncmp(url, "http", 4) != 0 ||
        strlen(url) >= api_cap) {
        rc = pc_err_set(err, PC_E_INVALID,
                        "expected {\"id\": N >= 1, \"raft_address\": \"host:port\", "
                        "\"api_url\": \"http://...\"} and nothing else");
    } else {
        *id = (uint64_t)n;
        snprintf(raft_address, raft_cap, "%s", raft);
        snprintf(api_url, api_cap, "%s", url);
    }
    json_decref(root);
    return rc;
}
