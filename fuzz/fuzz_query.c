/* libFuzzer target: core.query (src/query.c), the PHP-style query
 * encoder of batch commands, on any Lua value built from the input
 * (common.h): cycles, NaN and infinities, functions, threads, userdata,
 * NUL bytes and invalid UTF-8 in keys and values, mixed and sparse keys.
 *
 * Checks: it returns one string or raises a Lua error with a message
 * (never crashes); the string holds printable ASCII only, since every
 * byte outside the unreserved set is percent-encoded. */
#include "common.h"
#include "query.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = b24_fuzz_L;
    int top = lua_gettop(L);

    lua_pushcfunction(L, b24_query);
    b24_fuzz_value(L, data, size, 64, 1);
    if (lua_pcall(L, 1, 1, 0) == 0) {
        size_t len, i;
        const char *s;
        if (lua_type(L, -1) != LUA_TSTRING)
            abort();
        s = lua_tolstring(L, -1, &len);
        for (i = 0; i < len; i++)
            if (s[i] < 0x21 || s[i] > 0x7e)
                abort();
    } else if (lua_type(L, -1) != LUA_TSTRING) {
        abort();
    }
    b24_fuzz_end(L, top);
    return 0;
}
