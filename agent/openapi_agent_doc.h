/* openapi_agent_doc.h - docs/openapi-agent.yaml as built into the agent
 * (its admin address serves it at GET /v1/openapi.yaml), NUL-terminated
 * after len bytes. */
#ifndef PC_OPENAPI_AGENT_DOC_H
#define PC_OPENAPI_AGENT_DOC_H

#include <stddef.h>

extern const unsigned char pc_openapi_agent_yaml[];
extern const size_t pc_openapi_agent_yaml_len;

#endif
