/* pb_struct.c - JSON <-> google.protobuf.Struct (see pb_struct.h). */
#include "pb_struct.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64

static Google__Protobuf__Value *value_from_json(const json_t *j, int depth);

static Google__Protobuf__Struct *struct_from(const json_t *o, int depth)
{
    if (!json_is_object(o) || depth > MAX_DEPTH)
        return NULL;
    Google__Protobuf__Struct *s = malloc(sizeof(*s));
    if (s == NULL)
        return NULL;
    google__protobuf__struct__init(s);
    size_t n = json_object_size(o);
    s->fields = calloc(n ? n : 1, sizeof(*s->fields));
    if (s->fields == NULL) {
        free(s);
        return NULL;
    }
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)o, key, v)
    {
        Google__Protobuf__Struct__FieldsEntry *e = malloc(sizeof(*e));
        if (e == NULL)
            goto fail;
        google__protobuf__struct__fields_entry__init(e);
        s->fields[s->n_fields++] = e;
        if ((e->key = strdup(key)) == NULL || (e->value = value_from_json(v, depth + 1)) == NULL)
            goto fail;
    }
    return s;
fail:
    google__protobuf__struct__free_unpacked(s, NULL);
    return NULL;
}

static Google__Protobuf__Value *value_from_json(const json_t *j, int depth)
{
    if (depth > MAX_DEPTH)
        return NULL;
    Google__Protobuf__Value *v = malloc(sizeof(*v));
    if (v == NULL)
        return NULL;
    google__protobuf__value__init(v);
    switch (json_typeof(j)) {
    case JSON_NULL:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE;
        v->null_value = GOOGLE__PROTOBUF__NULL_VALUE__NULL_VALUE;
        return v;
    case JSON_TRUE:
    case JSON_FALSE:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
        v->bool_value = json_is_true(j);
        return v;
    case JSON_INTEGER:
    case JSON_REAL:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
        v->number_value = json_number_value(j);
        return v;
    case JSON_STRING:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
        if ((v->string_value = malloc(json_string_length(j) + 1)) != NULL) {
            memcpy(v->string_value, json_string_value(j), json_string_length(j) + 1);
            return v;
        }
        break;
    case JSON_OBJECT:
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE;
        if ((v->struct_value = struct_from(j, depth + 1)) != NULL)
            return v;
        break;
    case JSON_ARRAY: {
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE;
        Google__Protobuf__ListValue *l = malloc(sizeof(*l));
        if (l == NULL)
            break;
        google__protobuf__list_value__init(l);
        v->list_value = l;
        size_t n = json_array_size(j);
        if ((l->values = calloc(n ? n : 1, sizeof(*l->values))) == NULL)
            break;
        for (size_t i = 0; i < n; i++) {
            if ((l->values[i] = value_from_json(json_array_get(j, i), depth + 1)) == NULL)
                break;
            l->n_values++;
        }
        if (l->n_values == n)
            return v;
        break;
    }
    }
    google__protobuf__value__free_unpacked(v, NULL);
    return NULL;
}

Google__Protobuf__Struct *pc_struct_from_json(const json_t *o)
{
    return struct_from(o, 0);
}

static json_t *value_to_json(const Google__Protobuf__Value *v, int depth);

static json_t *struct_to(const Google__Protobuf__Struct *s, int depth)
{
    json_t *o = json_object();
    for (size_t i = 0; o != NULL && i < s->n_fields; i++) {
        const Google__Protobuf__Struct__FieldsEntry *e = s->fields[i];
        json_t *v = e->value ? value_to_json(e->value, depth + 1) : json_null();
        if (v == NULL || json_object_set_new(o, e->key, v) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

static json_t *value_to_json(const Google__Protobuf__Value *v, int depth)
{
    if (depth > MAX_DEPTH)
        return NULL;
    switch (v->kind_case) {
    case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE: {
        double d = v->number_value;
        if (!isfinite(d))
            return NULL;
        /* Whole numbers go back as JSON integers, as the REST documents
         * have them. */
        if (d == floor(d) && fabs(d) < 9007199254740992.0)
            return json_integer((json_int_t)d);
        return json_real(d);
    }
    case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE: return json_string(v->string_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE: return json_boolean(v->bool_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE:
        return v->struct_value ? struct_to(v->struct_value, depth + 1) : json_object();
    case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE: {
        json_t *a = json_array();
        for (size_t i = 0; a != NULL && v->list_value != NULL && i < v->list_value->n_values; i++) {
            json_t *e = value_to_json(v->list_value->values[i], depth + 1);
            if (e == NULL || json_array_append_new(a, e) != 0) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    default: /* null, or no kind set */ return json_null();
    }
}

json_t *pc_struct_to_json(const Google__Protobuf__Struct *s)
{
    return struct_to(s, 0);
}
