/* config.h - daemon configuration from defaults, a JSON file and flags.
 *
 * A daemon describes its settings once, as a table of pc_cfg_option; the
 * same table drives defaults, the JSON config file (--config FILE, an
 * object whose keys are the option names), command-line flags
 * (--name VALUE or --name=VALUE, '-' and '_' interchangeable) and --help.
 * Later sources override earlier ones: defaults, then the file, then flags.
 * Unknown keys, wrong types and out-of-range values are errors that name
 * the key (and the file's line and column for JSON syntax errors). */
#ifndef PC_CONFIG_H
#define PC_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "err.h"

typedef enum {
    PC_CFG_STRING, /* char *, malloc'd */
    PC_CFG_U64,    /* uint64_t */
    PC_CFG_SIZE,   /* uint64_t bytes; accepts 123, "64KiB", "64MiB", "1GiB" */
    PC_CFG_BOOL,   /* bool; flags: --name, --name=true|false */
    PC_CFG_LIST,   /* pc_strlist; each flag use appends, the file gives an array
                    (or one string) */
} pc_cfg_type;

typedef struct pc_strlist {
    char **items;
    size_t count;
} pc_strlist;

typedef struct pc_cfg_option {
    const char *name; /* snake_case */
    pc_cfg_type type;
    size_t offset;     /* offsetof the field in the target struct */
    const char *def;   /* default as text, NULL for none */
    uint64_t min, max; /* numeric bounds (max 0: unbounded) */
    const char *help;
} pc_cfg_option;

/* Fills target from defaults, then --config, then flags. argv[0] is the
 * program name. Returns PC_E_INVALID with a message on any error, and 1
 * (not an error) when --help was given, after printing usage to stdout. */
int pc_config_load(const pc_cfg_option *opts, void *target, int argc, char **argv, pc_err *err);
/* Same, from a JSON text only (used by the fuzz target and tests). */
int pc_config_load_json(const pc_cfg_option *opts, void *target, const char *json, size_t len,
                        pc_err *err);
void pc_config_free(const pc_cfg_option *opts, void *target);
void pc_config_usage(FILE *out, const char *program, const pc_cfg_option *opts);

int pc_parse_size(const char *text, uint64_t *out);

#endif
