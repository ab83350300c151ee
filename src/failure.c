/* The failure table of every transport (see failure.h). */
#include "failure.h"

int b24_failure_push(lua_State *L, const char *code, int desc_idx, long status,
                     int env_idx, const char *location)
{
    lua_pushnil(L);
    lua_createtable(L, 0, 5);
    lua_pushstring(L, code);
    lua_setfield(L, -2, "code");
    lua_pushvalue(L, desc_idx);
    lua_setfield(L, -2, "description");
    if (status) {
        lua_pushinteger(L, (lua_Integer)status);
        lua_setfield(L, -2, "status");
    }
    if (env_idx) {
        lua_pushvalue(L, env_idx);
        lua_setfield(L, -2, "envelope");
    }
    if (location) {
        lua_pushstring(L, location);
        lua_setfield(L, -2, "location");
    }
    return 2;
}
