/* libFuzzer target: b24_envelope_push (src/envelope.c), the decoding of
 * every HTTP answer: cjson's decode, the integer walk, and the envelope
 * checks, with any status and any body.
 *
 * Input: an optional status line "NNN\n" (default 200), then the body.
 * Checks: it returns either (envelope, status) with a result, or
 * (nil, failure) with failure = { code, description, status,
 * envelope-or-nil }, never raises, and every integral number of the
 * envelope is a Lua integer. */
#define B24_FUZZ_DECODER
#include "common.h"
#include "envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = b24_fuzz_L;
    long status = 200;
    int top = lua_gettop(L), n, base;
    const char *body = (const char *)data;

    if (size >= 4 && data[3] == '\n' && data[0] >= '0' && data[0] <= '9' &&
        data[1] >= '0' && data[1] <= '9' && data[2] >= '0' && data[2] <= '9') {
        status = (data[0] - '0') * 100 + (data[1] - '0') * 10 + (data[2] - '0');
        body += 4;
        size -= 4;
    }
    n = b24_envelope_push(L, 1, status, body, size);
    base = lua_gettop(L) - n + 1;
    if (base <= top)
        abort();
    if (n != 2)
        abort();
    if (!lua_isnil(L, base)) {
        if (lua_type(L, base) != LUA_TTABLE || !lua_isinteger(L, base + 1) ||
            lua_tointeger(L, base + 1) != status || status < 200 || status > 299)
            abort();
        lua_getfield(L, base, "result");
        if (lua_isnil(L, -1))
            abort();
        lua_pop(L, 1);
        b24_fuzz_check_normalized(L, base, 0);
    } else {
        int f = base + 1;
        if (lua_type(L, f) != LUA_TTABLE)
            abort();
        lua_getfield(L, f, "code");
        lua_getfield(L, f, "description");
        lua_getfield(L, f, "status");
        lua_getfield(L, f, "envelope");
        lua_getfield(L, f, "location");
        if (lua_type(L, -5) != LUA_TSTRING || lua_type(L, -4) != LUA_TSTRING ||
            /* status 0 is "no status" (failure.h) */
            (status ? !lua_isinteger(L, -3) || lua_tointeger(L, -3) != status : !lua_isnil(L, -3)) ||
            !(lua_isnil(L, -2) || lua_type(L, -2) == LUA_TTABLE) || !lua_isnil(L, -1))
            abort();
        if (lua_type(L, -2) == LUA_TTABLE)
            b24_fuzz_check_normalized(L, -2, 0);
    }
    b24_fuzz_end(L, top);
    return 0;
}
