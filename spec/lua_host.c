/* A minimal Lua 5.4 interpreter for make test-asan: "lua_host script
 * [args]" runs the script with the standard libraries and the usual `arg`
 * table and `...`, and exits with the script's status (os.exit included);
 * "lua_host -e chunk" runs the chunk (specs start arg[-1] that way).
 *
 * Built with -fsanitize=address,undefined, so the sanitizer runtime is
 * part of the executable: the instrumented core it loads is checked,
 * and the processes the specs start (curl, nginx, the CLI under lua5.4)
 * do not inherit a preloaded runtime, which some of them (curl) cannot
 * run under. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
    return 1;
}

int main(int argc, char **argv)
{
    lua_State *L;
    int i, status;

    if (argc < 2) {
        fprintf(stderr, "usage: %s script [args]\n", argv[0]);
        return 2;
    }
    L = luaL_newstate();
    if (!L) {
        fprintf(stderr, "%s: cannot create a Lua state\n", argv[0]);
        return 1;
    }
    luaL_openlibs(L);
    lua_createtable(L, argc, 1);
    for (i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - 1); /* arg[0] is the script, arg[-1] this host */
    }
    lua_setglobal(L, "arg");
    lua_pushcfunction(L, traceback);
    if (strcmp(argv[1], "-e") == 0) {
        status = argc == 3 ? luaL_loadstring(L, argv[2]) : LUA_ERRRUN;
        if (status == LUA_OK)
            status = lua_pcall(L, 0, 0, 1);
        else if (argc != 3)
            lua_pushliteral(L, "usage: -e chunk, nothing after it");
        if (status != LUA_OK)
            fprintf(stderr, "%s: %s\n", argv[0], lua_tostring(L, -1));
        lua_close(L);
        return status == LUA_OK ? 0 : 1;
    }
    status = luaL_loadfile(L, argv[1]);
    if (status == LUA_OK) {
        luaL_checkstack(L, argc, "too many arguments");
        for (i = 2; i < argc; i++)
            lua_pushstring(L, argv[i]);
        status = lua_pcall(L, argc - 2, 0, 1);
    }
    if (status != LUA_OK)
        fprintf(stderr, "%s: %s\n", argv[0], lua_tostring(L, -1));
    lua_close(L);
    return status == LUA_OK ? 0 : 1;
}
