/* api_keys.c - the signing keys: which one signs now, the roots, the
 * rotations, and rotating (docs/api.md "Keys"). */
#include <stdlib.h>
#include <string.h>

#include "api_bodies.h"
#include "api_internal.h"

#define ROTATION_BODY_MAX 4096

static json_t *key_json(const pc_public_key *k, pc_signer *signer)
{
    char text[128], id[PC_HEX_KEY_ID_LEN];
    pc_key_format_public(k, text, sizeof(text));
    pc_hex(id, k->id, PC_KEY_ID_LEN);
    return json_pack("{s:s,s:s,s:b}", "key_id", id, "public_key", text, "held",
                     pc_signer_held(signer, k->pk) != NULL);
}

static int add_rotation(void *arg, uint64_t seq, const pc_public_key *next,
                        const uint8_t signer_id[PC_KEY_ID_LEN], int64_t created_unix_ms)
{
    json_t *list = arg;
    char by[PC_HEX_KEY_ID_LEN], id[PC_HEX_KEY_ID_LEN];
    pc_hex(by, signer_id, PC_KEY_ID_LEN);
    pc_hex(id, next->id, PC_KEY_ID_LEN);
    json_array_append_new(list, json_pack("{s:I,s:s,s:s,s:I}", "seq", (json_int_t)seq, "key_id", id,
                                          "signed_by", by, "created_unix_ms",
                                          (json_int_t)created_unix_ms));
    return 0;
}

void api_get_keys(api_call *call)
{
    pc_signer *signer = call->api->opt.signer;
    pc_public_key cur;
    uint64_t since = 0;
    pc_err err;
    json_t *rotations = json_array();
    int rc = pc_signer_foreach_rotation(signer, add_rotation, rotations, &err);
    if (rc != PC_OK) {
        json_decref(rotations);
        pc_httpd_error(call->rq, rc, "%s", err.msg);
        return;
    }
    /* null: no rotation yet and no root key held (roots kept offline). */
    json_t *current = pc_signer_current_public(signer, &cur, &since, &err) == PC_OK
                          ? key_json(&cur, signer)
                          : json_null();
    json_t *roots = json_array();
    const pc_keyring *ring = pc_signer_roots(signer);
    for (size_t i = 0; i < ring->count; i++)
        json_array_append_new(roots, key_json(&ring->keys[i], signer));
    pc_httpd_reply_json(call->rq, 200,
                        json_pack("{s:o,s:I,s:o,s:o}", "current", current, "current_since_seq",
                                  (json_int_t)since, "roots", roots, "rotations", rotations),
                        NULL);
}

static void rotation_body(void *arg, pc_httpd_req *rq, int rc, uint8_t *body, size_t len)
{
    pc_api *api = arg;
    if (rc != PC_OK)
        return;
    pc_change *c = pc_change_new(PC_CHANGE_KEY_ROTATE, NULL);
    pc_err err;
    int has_root = 0;
    if (c == NULL) {
        pc_httpd_error(rq, PC_E_NOMEM, "out of memory");
    } else if (pc_api_parse_rotation(body, len, c->u.key.next, c->u.key.root, &has_root,
                                     &c->u.key.authorization, &err) != PC_OK) {
        pc_change_free(c);
        pc_httpd_error(rq, PC_E_INVALID, "%s", err.msg);
    } else {
        c->u.key.sign_with_root = has_root != 0;
        api_submit(api, rq, c);
    }
    free(body);
}

void api_post_rotation(api_call *call)
{
    pc_httpd_read_body(call->rq, ROTATION_BODY_MAX, rotation_body, call->api);
}

json_t *api_key_change_json(const pc_change *c, const pc_change_result *r)
{
    pc_public_key next;
    memcpy(next.pk, c->u.key.next, PC_PK_LEN);
    pc_key_id(next.id, next.pk);
    char id[PC_HEX_KEY_ID_LEN];
    pc_hex(id, next.id, PC_KEY_ID_LEN);
    return json_pack("{s:s,s:I,s:s,s:I}", "kind", "key_rotation", "seq", (json_int_t)r->seq,
                     "key_id", id, "created_unix_ms", (json_int_t)r->created_unix_ms);
}
