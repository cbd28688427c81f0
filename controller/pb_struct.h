/* pb_struct.h - JSON documents as google.protobuf.Struct and back: the
 * Connect API answers with the REST documents (docs/api.md "Connect"), as
 * JSON for application/json and as a Struct for application/proto.
 *
 * The two hold the same values, but for numbers: a Struct's numbers are
 * doubles, as JSON's are to most readers, so an integer beyond 2^53 loses
 * precision (popcast's seqs, versions and counts stay far below it). */
#ifndef PC_PB_STRUCT_H
#define PC_PB_STRUCT_H

#include <jansson.h>

#include "google/protobuf/struct.pb-c.h"

/* The Struct of a JSON object (NULL when o is not an object, nests deeper
 * than 64, or out of memory). Free with
 * google__protobuf__struct__free_unpacked(s, NULL). */
Google__Protobuf__Struct *pc_struct_from_json(const json_t *o);

/* The JSON object of a Struct (a NaN or infinite number is refused: NULL;
 * NULL when out of memory). */
json_t *pc_struct_to_json(const Google__Protobuf__Struct *s);

#endif
