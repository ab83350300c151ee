/* The few Lua API pieces that differ between 5.1/LuaJIT and 5.2+.
 * Prefixed b24_ so they can never clash with LuaJIT's or a compat
 * library's own definitions of the same names. */
#ifndef B24_COMPAT_H
#define B24_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM >= 502
#define b24_setfuncs luaL_setfuncs
#define b24_rawlen lua_rawlen
#else
/* 5.1 has no luaL_setfuncs: register each function with the same nup
 * upvalues copied from the top of the stack, as 5.2 does. */
static void b24_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    int i;
    for (; l->name != NULL; l++) {
        for (i = 0; i < nup; i++)
            lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}
#define b24_rawlen lua_objlen
#endif

/* Lua 5.3 split numbers into integers and floats; before that every
 * number is a double and there is nothing to normalise. */
#if LUA_VERSION_NUM >= 503
#define B24_HAS_INTEGERS 1
#else
#define B24_HAS_INTEGERS 0
#endif

#endif
