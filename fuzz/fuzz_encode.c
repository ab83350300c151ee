/* libFuzzer target: core.json_encode (src/json.c), the JSON encoder of request
 * bodies, on any Lua value built from the input (common.h): cycles, NaN
 * and infinities, functions, threads, userdata, NUL bytes and invalid
 * UTF-8, mixed and sparse keys.
 *
 * Checks: it returns one string or raises a Lua error with a message
 * (never crashes); the string is valid UTF-8 and valid JSON (cjson
 * decodes it). */
#define B24_FUZZ_DECODER
#include "common.h"

/* 1 when s[0..len) is UTF-8 without overlong forms or surrogates. */
static int valid_utf8(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i], cp, need, k;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF)
            need = 1, cp = c & 0x1F;
        else if (c >= 0xE0 && c <= 0xEF)
            need = 2, cp = c & 0x0F;
        else if (c >= 0xF0 && c <= 0xF4)
            need = 3, cp = c & 0x07;
        else
            return 0;
        if (need >= len - i)
            return 0;
        for (k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += need + 1;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = b24_fuzz_L;
    int top = lua_gettop(L);

    lua_pushcfunction(L, b24_json_encode);
    b24_fuzz_value(L, data, size, 64, 1);
    if (lua_pcall(L, 1, 1, 0) == 0) {
        size_t len;
        const char *s;
        if (lua_type(L, -1) != LUA_TSTRING)
            abort();
        s = lua_tolstring(L, -1, &len);
        if (!valid_utf8((const unsigned char *)s, len))
            abort();
        lua_pushvalue(L, 1);
        lua_pushvalue(L, -2);
        if (lua_pcall(L, 1, 1, 0) != 0)
            abort(); /* not JSON */
    } else if (lua_type(L, -1) != LUA_TSTRING) {
        abort();
    }
    b24_fuzz_end(L, top);
    return 0;
}
