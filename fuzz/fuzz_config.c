/* fuzz_config.c - configuration files: every option type, from JSON. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "config.h"
#include "fuzz.h"

typedef struct cfg {
    char *name;
    uint64_t count;
    uint64_t size;
    bool flag;
    pc_strlist list;
} cfg;

static const pc_cfg_option opts[] = {
    {"name", PC_CFG_STRING, offsetof(cfg, name), "dflt", 0, 0, "a name"},
    {"count", PC_CFG_U64, offsetof(cfg, count), "5", 1, 100, "a count"},
    {"size", PC_CFG_SIZE, offsetof(cfg, size), "1KiB", 0, 0, "a size"},
    {"flag", PC_CFG_BOOL, offsetof(cfg, flag), "false", 0, 0, "a flag"},
    {"list", PC_CFG_LIST, offsetof(cfg, list), "x", 0, 0, "a list"},
    {NULL, 0, 0, NULL, 0, 0, NULL},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cfg c;
    memset(&c, 0, sizeof(c));
    pc_err err;
    pc_config_load_json(opts, &c, (const char *)data, size, &err);
    pc_config_free(opts, &c);
    return 0;
}
