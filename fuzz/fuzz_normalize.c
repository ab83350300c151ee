/* libFuzzer target: the integer normalisation walk of src/json.c
 * (normalize, static there, so the file is included whole) on Lua tables
 * built directly from the input (common.h), with floats cjson would never
 * produce: NaN, infinities, -0.0, 2^63, 1e308, and nesting up to cjson's
 * own limit of 1000.
 *
 * Checks: no crash, no Lua stack growth, and afterwards no float left
 * that is integral and fits a lua_Integer. */
#include "common.h"
#include "../src/json.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = b24_fuzz_L;
    int top = lua_gettop(L);

    b24_fuzz_value(L, data, size, 1000, 0);
    if (lua_type(L, -1) == LUA_TTABLE) {
        normalize(L);
        if (lua_gettop(L) != top + 1)
            abort();
        b24_fuzz_check_normalized(L, -1, 0);
    }
    b24_fuzz_end(L, top);
    return 0;
}
