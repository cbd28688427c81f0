/* pop_map.c - PoP locations (see pop_map.h). */
#include "pop_map.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A decimal number filling exactly [s, end), within [min, max]. */
static bool parse_degrees(const char *s, const char *end, double min, double max, double *out)
{
    if (s == end || end - s > 32)
        return false;
    char text[40];
    memcpy(text, s, (size_t)(end - s));
    text[end - s] = '\0';
    /* strtod takes hex, inf and nan: only plain decimals are degrees. */
    for (const char *p = text; *p != '\0'; p++)
        if (strchr("0123456789.-+", *p) == NULL)
            return false;
    char *stop = NULL;
    errno = 0;
    double v = strtod(text, &stop);
    if (errno != 0 || stop == text || *stop != '\0' || !isfinite(v) || v < min || v > max)
        return false;
    *out = v;
    return true;
}

int pc_pop_map_parse(const pc_strlist *in, pc_pop_location **out, size_t *n, pc_err *err)
{
    *out = NULL;
    *n = 0;
    if (in == NULL || in->count == 0)
        return PC_OK;
    pc_pop_location *pops = calloc(in->count, sizeof(*pops));
    if (pops == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    for (size_t i = 0; i < in->count; i++) {
        const char *item = in->items[i];
        const char *eq = strchr(item, '=');
        const char *comma = eq ? strchr(eq, ',') : NULL;
        pc_pop_location *p = &pops[i];
        size_t name_len = eq ? (size_t)(eq - item) : 0;
        if (eq == NULL || comma == NULL || name_len == 0 || name_len > PC_ID_MAX) {
            free(pops);
            return pc_err_set(err, PC_E_INVALID,
                              "pop_locations: '%.80s' is not POP=LAT,LON (e.g. fra=50.11,8.68)",
                              item);
        }
        memcpy(p->pop, item, name_len);
        p->pop[name_len] = '\0';
        if (!pc_id_valid(p->pop)) {
            pc_err_set(err, PC_E_INVALID, "pop_locations: '%.80s': '%s' is not a PoP name", item,
                       p->pop);
            free(pops);
            return PC_E_INVALID;
        }
        if (!parse_degrees(eq + 1, comma, -90, 90, &p->lat) ||
            !parse_degrees(comma + 1, comma + 1 + strlen(comma + 1), -180, 180, &p->lon)) {
            free(pops);
            return pc_err_set(err, PC_E_INVALID,
                              "pop_locations: '%.80s': latitude must be a decimal from -90 to 90, "
                              "longitude from -180 to 180",
                              item);
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(pops[j].pop, p->pop) == 0) {
                pc_err_set(err, PC_E_INVALID, "pop_locations: PoP %s is given twice", p->pop);
                free(pops);
                return PC_E_INVALID;
            }
    }
    *out = pops;
    *n = in->count;
    return PC_OK;
}

json_t *pc_pop_map_json(const pc_pop_location *pops, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a != NULL && i < n; i++) {
        json_t *o =
            json_pack("{s:s,s:f,s:f}", "pop", pops[i].pop, "lat", pops[i].lat, "lon", pops[i].lon);
        if (o == NULL || json_array_append_new(a, o) != 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}
