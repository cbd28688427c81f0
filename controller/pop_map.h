/* pop_map.h - where each PoP is on the map (the controller's
 * pop_locations), for the fleet view and the dashboard's world map.
 *
 * Each location is "POP=LAT,LON" in decimal degrees ("fra=50.11,8.68"):
 * POP an id (names.h), LAT in [-90, 90], LON in [-180, 180]. A PoP named
 * twice, or any other text, is refused with the reason, so a typo stops
 * the controller at start rather than putting a PoP in the sea. */
#ifndef PC_POP_MAP_H
#define PC_POP_MAP_H

#include <jansson.h>
#include <stddef.h>

#include "config.h"
#include "err.h"
#include "names.h"

typedef struct pc_pop_location {
    char pop[PC_ID_MAX + 1];
    double lat, lon;
} pc_pop_location;

/* Parses every item of in into *out (malloc'd; NULL when none) and *n.
 * PC_E_INVALID naming the item and why. */
int pc_pop_map_parse(const pc_strlist *in, pc_pop_location **out, size_t *n, pc_err *err);

/* [{"pop","lat","lon"}], in the order given; NULL when out of memory. */
json_t *pc_pop_map_json(const pc_pop_location *pops, size_t n);

#endif
