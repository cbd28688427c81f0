/* config.c - table-driven configuration (see config.h). */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define CONFIG_MAX_OPTIONS 128
#define CONFIG_FILE_MAX    (1024 * 1024)

int pc_parse_size(const char *text, uint64_t *out)
{
    if (text == NULL || !isdigit((unsigned char)text[0]))
        return PC_E_INVALID;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0)
        return PC_E_INVALID;
    static const struct {
        const char *suffix;
        unsigned shift;
    } units[] = {{"", 0},     {"B", 0},  {"KiB", 10}, {"K", 10},
                 {"MiB", 20}, {"M", 20}, {"GiB", 30}, {"G", 30}};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].suffix) == 0) {
            if (units[i].shift && v > (UINT64_MAX >> units[i].shift))
                return PC_E_INVALID;
            *out = (uint64_t)v << units[i].shift;
            return PC_OK;
        }
    }
    return PC_E_INVALID;
}

static int parse_u64(const char *text, uint64_t *out)
{
    if (text == NULL || !isdigit((unsigned char)text[0]))
        return PC_E_INVALID;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0 || *end != '\0')
        return PC_E_INVALID;
    *out = v;
    return PC_OK;
}

static void *field(void *target, const pc_cfg_option *o)
{
    return (char *)target + o->offset;
}

static void strlist_clear(pc_strlist *l)
{
    for (size_t i = 0; i < l->count; i++)
        free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->count = 0;
}

static int strlist_append(pc_strlist *l, const char *s)
{
    if (l->count >= 1024)
        return PC_E_TOO_LARGE;
    char **grown = realloc(l->items, (l->count + 1) * sizeof(*grown));
    if (grown == NULL)
        return PC_E_NOMEM;
    l->items = grown;
    if ((l->items[l->count] = strdup(s)) == NULL)
        return PC_E_NOMEM;
    l->count++;
    return PC_OK;
}

static int check_bounds(const pc_cfg_option *o, uint64_t v, pc_err *err)
{
    if (v < o->min || (o->max != 0 && v > o->max))
        return pc_err_set(err, PC_E_INVALID, "%s: %llu is outside [%llu, %llu]", o->name,
                          (unsigned long long)v, (unsigned long long)o->min,
                          (unsigned long long)o->max);
    return PC_OK;
}

/* Sets one option from text (defaults and flags). */
static int set_from_text(const pc_cfg_option *o, void *target, const char *text, bool append,
                         pc_err *err)
{
    void *f = field(target, o);
    uint64_t v = 0;
    switch (o->type) {
    case PC_CFG_STRING: {
        char *copy = strdup(text);
        if (copy == NULL)
            return pc_err_set(err, PC_E_NOMEM, "out of memory");
        free(*(char **)f);
        *(char **)f = copy;
        return PC_OK;
    }
    case PC_CFG_U64:
    case PC_CFG_SIZE:
        if ((o->type == PC_CFG_SIZE ? pc_parse_size(text, &v) : parse_u64(text, &v)) != PC_OK)
            return pc_err_set(err, PC_E_INVALID, "%s: '%s' is not a %s", o->name, text,
                              o->type == PC_CFG_SIZE ? "size (e.g. 64MiB)" : "whole number");
        if (check_bounds(o, v, err) != PC_OK)
            return PC_E_INVALID;
        *(uint64_t *)f = v;
        return PC_OK;
    case PC_CFG_BOOL:
        if (strcmp(text, "true") == 0 || strcmp(text, "1") == 0)
            *(bool *)f = true;
        else if (strcmp(text, "false") == 0 || strcmp(text, "0") == 0)
            *(bool *)f = false;
        else
            return pc_err_set(err, PC_E_INVALID, "%s: '%s' is not true or false", o->name, text);
        return PC_OK;
    case PC_CFG_LIST:
        if (!append)
            strlist_clear((pc_strlist *)f);
        if (strlist_append((pc_strlist *)f, text) != PC_OK)
            return pc_err_set(err, PC_E_INVALID, "%s: too many values", o->name);
        return PC_OK;
    }
    return pc_err_set(err, PC_E_INTERNAL, "%s: unknown option type", o->name);
}

static int set_from_json(const pc_cfg_option *o, void *target, json_t *v, pc_err *err)
{
    switch (o->type) {
    case PC_CFG_STRING:
        if (!json_is_string(v))
            return pc_err_set(err, PC_E_INVALID, "%s: expected a string", o->name);
        return set_from_text(o, target, json_string_value(v), false, err);
    case PC_CFG_U64:
    case PC_CFG_SIZE:
        if (json_is_integer(v)) {
            json_int_t i = json_integer_value(v);
            if (i < 0)
                return pc_err_set(err, PC_E_INVALID, "%s: must not be negative", o->name);
            if (check_bounds(o, (uint64_t)i, err) != PC_OK)
                return PC_E_INVALID;
            *(uint64_t *)field(target, o) = (uint64_t)i;
            return PC_OK;
        }
        if (o->type == PC_CFG_SIZE && json_is_string(v))
            return set_from_text(o, target, json_string_value(v), false, err);
        return pc_err_set(err, PC_E_INVALID, "%s: expected a number", o->name);
    case PC_CFG_BOOL:
        if (!json_is_boolean(v))
            return pc_err_set(err, PC_E_INVALID, "%s: expected true or false", o->name);
        *(bool *)field(target, o) = json_is_true(v);
        return PC_OK;
    case PC_CFG_LIST: {
        pc_strlist *l = field(target, o);
        if (json_is_string(v)) {
            /* One value: the same as a one-item array. */
            strlist_clear(l);
            return set_from_text(o, target, json_string_value(v), true, err);
        }
        if (!json_is_array(v))
            return pc_err_set(err, PC_E_INVALID, "%s: expected an array of strings", o->name);
        strlist_clear(l);
        size_t i;
        json_t *item;
        json_array_foreach(v, i, item)
        {
            if (!json_is_string(item))
                return pc_err_set(err, PC_E_INVALID, "%s[%zu]: expected a string", o->name, i);
            if (strlist_append(l, json_string_value(item)) != PC_OK)
                return pc_err_set(err, PC_E_INVALID, "%s: too many values", o->name);
        }
        return PC_OK;
    }
    }
    return pc_err_set(err, PC_E_INTERNAL, "%s: unknown option type", o->name);
}

/* Flag names use '-', option names '_': compare treating them as equal. */
static bool name_matches(const char *opt, const char *flag, size_t flag_len)
{
    size_t i = 0;
    for (; i < flag_len && opt[i] != '\0'; i++) {
        char a = opt[i] == '-' ? '_' : opt[i];
        char b = flag[i] == '-' ? '_' : flag[i];
        if (a != b)
            return false;
    }
    return i == flag_len && opt[i] == '\0';
}

static const pc_cfg_option *find_option(const pc_cfg_option *opts, const char *name, size_t len)
{
    for (const pc_cfg_option *o = opts; o->name != NULL; o++)
        if (name_matches(o->name, name, len))
            return o;
    return NULL;
}

static int apply_json_object(const pc_cfg_option *opts, void *target, json_t *root,
                             const char *source, pc_err *err)
{
    if (!json_is_object(root))
        return pc_err_set(err, PC_E_INVALID, "%s: the configuration must be a JSON object", source);
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value)
    {
        const pc_cfg_option *o = find_option(opts, key, strlen(key));
        if (o == NULL || strchr(key, '-') != NULL)
            return pc_err_set(err, PC_E_INVALID, "%s: unknown setting '%s'", source, key);
        if (set_from_json(o, target, value, err) != PC_OK) {
            pc_err_wrap(err, "%s", source);
            return PC_E_INVALID;
        }
    }
    return PC_OK;
}

static int apply_defaults(const pc_cfg_option *opts, void *target, pc_err *err)
{
    for (const pc_cfg_option *o = opts; o->name != NULL; o++)
        if (o->def != NULL && set_from_text(o, target, o->def, false, err) != PC_OK)
            return PC_E_INVALID;
    return PC_OK;
}

int pc_config_load_json(const pc_cfg_option *opts, void *target, const char *json, size_t len,
                        pc_err *err)
{
    if (apply_defaults(opts, target, err) != PC_OK)
        return PC_E_INVALID;
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return pc_err_set(err, PC_E_INVALID, "config line %d column %d: %s", jerr.line, jerr.column,
                          jerr.text);
    int rc = apply_json_object(opts, target, root, "config", err);
    json_decref(root);
    return rc;
}

static int load_file(const pc_cfg_option *opts, void *target, const char *path, pc_err *err)
{
    json_error_t jerr;
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return pc_err_set(err, PC_E_INVALID, "cannot open config file %s: %s", path,
                          strerror(errno));
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    rewind(f);
    if (size > CONFIG_FILE_MAX) {
        fclose(f);
        return pc_err_set(err, PC_E_INVALID, "config file %s is over 1 MiB", path);
    }
    json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &jerr);
    fclose(f);
    if (root == NULL)
        return pc_err_set(err, PC_E_INVALID, "%s:%d:%d: %s", path, jerr.line, jerr.column,
                          jerr.text);
    int rc = apply_json_object(opts, target, root, path, err);
    json_decref(root);
    return rc;
}

int pc_config_load(const pc_cfg_option *opts, void *target, int argc, char **argv, pc_err *err)
{
    if (apply_defaults(opts, target, err) != PC_OK)
        return PC_E_INVALID;
    /* The file first, wherever --config appears, so flags always win. */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            pc_config_usage(stdout, argv[0], opts);
            return 1;
        }
        const char *path = NULL;
        if (strcmp(a, "--config") == 0) {
            if (i + 1 >= argc)
                return pc_err_set(err, PC_E_INVALID, "--config needs a file name");
            path = argv[++i];
        } else if (strncmp(a, "--config=", 9) == 0) {
            path = a + 9;
        }
        if (path != NULL && load_file(opts, target, path, err) != PC_OK)
            return PC_E_INVALID;
    }
    /* A list flag's first use replaces the default or the file's list;
     * later uses append, so "--sync A --sync B" means exactly A and B. */
    bool list_seen[CONFIG_MAX_OPTIONS] = {false};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--config") == 0) {
            i++;
            continue;
        }
        if (strncmp(a, "--config=", 9) == 0)
            continue;
        if (strncmp(a, "--", 2) != 0)
            return pc_err_set(err, PC_E_INVALID, "unexpected argument '%s'", a);
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const pc_cfg_option *o = find_option(opts, name, nlen);
        if (o == NULL)
            return pc_err_set(err, PC_E_INVALID, "unknown option --%.*s (see --help)", (int)nlen,
                              name);
        const char *value = eq ? eq + 1 : NULL;
        if (value == NULL && o->type == PC_CFG_BOOL)
            value = "true";
        if (value == NULL) {
            if (i + 1 >= argc)
                return pc_err_set(err, PC_E_INVALID, "--%s needs a value", o->name);
            value = argv[++i];
        }
        size_t index = (size_t)(o - opts);
        bool append = index < CONFIG_MAX_OPTIONS && list_seen[index];
        if (index < CONFIG_MAX_OPTIONS)
            list_seen[index] = true;
        if (set_from_text(o, target, value, append, err) != PC_OK)
            return PC_E_INVALID;
    }
    return PC_OK;
}

void pc_config_free(const pc_cfg_option *opts, void *target)
{
    for (const pc_cfg_option *o = opts; o->name != NULL; o++) {
        if (o->type == PC_CFG_STRING) {
            free(*(char **)field(target, o));
            *(char **)field(target, o) = NULL;
        } else if (o->type == PC_CFG_LIST) {
            strlist_clear((pc_strlist *)field(target, o));
        }
    }
}

void pc_config_usage(FILE *out, const char *program, const pc_cfg_option *opts)
{
    fprintf(out, "usage: %s [--config FILE.json] [--option value ...]\n\noptions:\n", program);
    for (const pc_cfg_option *o = opts; o->name != NULL; o++) {
        char flag[64];
        size_t i = 0;
        for (; o->name[i] && i < sizeof(flag) - 1; i++)
            flag[i] = o->name[i] == '_' ? '-' : o->name[i];
        flag[i] = '\0';
        fprintf(out, "  --%-24s %s%s%s%s\n", flag, o->help, o->def ? " (default: " : "",
                o->def ? o->def : "", o->def ? ")" : "");
    }
}
