/* A Lua 5.4 interpreter whose allocator fails on demand, for
 * spec/out_of_memory_spec.lua: "oom_host script" runs the script with
 * the standard libraries and a global fail_after(n): the n-th allocation
 * from then on fails, and every one after it, until fail_after(-1).
 * Only growing allocations count (a shrink or a free always works, as
 * Lua's allocator contract requires). */
#include <stdio.h>
#include <stdlib.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

static long countdown = -1;

static void *allocate(void *ud, void *p, size_t old, size_t n)
{
    (void)ud;
    if (n == 0) {
        free(p);
        return NULL;
    }
    if (countdown >= 0 && (p == NULL || n > old)) {
        if (countdown == 0)
            return NULL;
        countdown--;
    }
    return realloc(p, n);
}

static int fail_after(lua_State *L)
{
    countdown = (long)luaL_checkinteger(L, 1);
    return 0;
}

int main(int argc, char **argv)
{
    lua_State *L;
    int status;

    if (argc != 2) {
        fprintf(stderr, "usage: %s script\n", argv[0]);
        return 2;
    }
    L = lua_newstate(allocate, NULL);
    if (!L)
        return 1;
    luaL_openlibs(L);
    lua_register(L, "fail_after", fail_after);
    status = luaL_dofile(L, argv[1]);
    if (status != LUA_OK)
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
    lua_close(L);
    return status == LUA_OK ? 0 : 1;
}
