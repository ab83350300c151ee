/* Lua values -> JSON request bodies, numbers exact. */
#ifndef B24_JSON_H
#define B24_JSON_H

#include <lua.h>

int b24_json_encode(lua_State *L);

#endif
