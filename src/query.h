/* Params -> PHP-style query strings for batch commands. */
#ifndef B24_QUERY_H
#define B24_QUERY_H

#include <lua.h>

int b24_query(lua_State *L);

#endif
