/* What every transport returns when a request fails: nil and one table
 *   { code = , description = , status = (or nil),
 *     envelope = (the decoded error envelope, or nil),
 *     location = (a redirect's target, or nil) }
 * so callers read fields by name instead of positions whose meaning
 * shifts. */
#ifndef B24_FAILURE_H
#define B24_FAILURE_H

#include <lua.h>

#include "codes.h"

/* Pushes nil and the failure table; returns 2. description is the string
 * at the absolute index desc_idx; status 0, env_idx 0 and location NULL
 * leave those fields out. */
int b24_failure_push(lua_State *L, const char *code, int desc_idx, long status,
                     int env_idx, const char *location);

#endif
