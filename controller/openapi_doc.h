/* openapi_doc.h - docs/openapi.yaml as built into the controller (it
 * serves it at GET /v1/openapi.yaml), NUL-terminated after len bytes. */
#ifndef PC_OPENAPI_DOC_H
#define PC_OPENAPI_DOC_H

#include <stddef.h>

extern const unsigned char pc_openapi_yaml[];
extern const size_t pc_openapi_yaml_len;

#endif
