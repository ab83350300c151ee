/* The few Lua API pieces that differ between Lua 5.1, 5.2, 5.3, 5.4 and
 * LuaJIT 2.1, so one C source builds for all of them.
 *
 * Everything is prefixed b24_ (or B24_): LuaJIT 2.1 already declares
 * luaL_setfuncs, luaL_testudata and friends in its headers, and
 * a host may link a compat library of its own, so defining the plain names
 * here could clash with either. Only what the core uses is here; add a
 * piece when a source file needs it, not before.
 *
 * LuaJIT reports LUA_VERSION_NUM 501 and is treated as 5.1 throughout. */
#ifndef B24_COMPAT_H
#define B24_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if !defined(LUA_VERSION_NUM) || LUA_VERSION_NUM < 501
#error "bitrix24 needs Lua 5.1 or later (or LuaJIT 2.1)"
#endif

/* b24_setfuncs(L, l, nup): luaL_setfuncs. The table is below the nup
 * upvalues on the top of the stack; each function gets its own copy of
 * them, and they are popped. */
#if LUA_VERSION_NUM >= 502
#define b24_setfuncs luaL_setfuncs
#else
static inline void b24_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    int i;
    luaL_checkstack(L, nup + 1, "too many upvalues");
    for (; l->name != NULL; l++) {
        for (i = 0; i < nup; i++)
            lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}
#endif

/* b24_rawlen(L, i): the raw length of a table, string or userdata. */
#if LUA_VERSION_NUM >= 502
#define b24_rawlen(L, i) ((size_t)lua_rawlen((L), (i)))
#else
#define b24_rawlen(L, i) ((size_t)lua_objlen((L), (i)))
#endif

/* Lua 5.3 split numbers into integers and floats; before that (and on
 * LuaJIT) every number is a double, lua_Integer is only a C type for
 * lua_pushinteger/lua_tointeger, and there is nothing to normalise. */
#if LUA_VERSION_NUM >= 503
#define B24_HAS_INTEGERS 1
#else
#define B24_HAS_INTEGERS 0
#endif

#endif
