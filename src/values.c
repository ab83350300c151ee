/* Reading Lua values the same way in both encoders (see values.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "compat.h"
#include "values.h"

/* Keys exactly 1..n: n distinct whole numbers within [1, n]. The count
 * alone is not enough, since # may stop at any border: {1, 2, nil, 4,
 * [0] = 0} has 4 keys and a length of 4 but no [3]. */
int b24_is_sequence(lua_State *L, int t)
{
    size_t n = b24_rawlen(L, t), count = 0;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_Number k;
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TNUMBER) {
            lua_pop(L, 1);
            return 0;
        }
        k = lua_tonumber(L, -1);
        if (!(k >= 1 && k <= (lua_Number)n && k == floor(k))) {
            lua_pop(L, 1);
            return 0;
        }
        count++;
    }
    return count == n;
}

size_t b24_format_number(lua_State *L, int idx, char *out, size_t size)
{
    lua_Number x;
    int n;
#if B24_HAS_INTEGERS
    if (lua_isinteger(L, idx)) {
        n = snprintf(out, size, "%lld", (long long)lua_tointeger(L, idx));
        return (size_t)n;
    }
#endif
    x = lua_tonumber(L, idx);
    if (x != x || x == HUGE_VAL || x == -HUGE_VAL)
        return 0;
    /* Whole numbers that a double holds exactly print as integers. */
    if (x == floor(x) && fabs(x) < 9007199254740992.0)
        n = snprintf(out, size, "%.0f", (double)x);
    else {
        /* The fewest digits that read back as the same double: 0.1 is
         * written 0.1, not 0.10000000000000001 (17 digits always do). */
        int digits;
        for (digits = 15; digits < 17; digits++) {
            n = snprintf(out, size, "%.*g", digits, (double)x);
            if (strtod(out, NULL) == (double)x)
                return (size_t)n;
        }
        n = snprintf(out, size, "%.17g", (double)x);
    }
    return (size_t)n;
}

/* On a clash, pushes the name written twice and returns 1; otherwise
 * pushes nothing and returns 0. */
static int key_clash(lua_State *L, int t)
{
    char num[64];
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TNUMBER) {
            size_t n = b24_format_number(L, -1, num, sizeof num);
            if (n) {
                lua_pushlstring(L, num, n);
                lua_rawget(L, t);
                if (!lua_isnil(L, -1)) {
                    lua_pop(L, 2);
                    lua_pushlstring(L, num, n);
                    return 1;
                }
                lua_pop(L, 1);
            }
        }
    }
    return 0;
}

int b24_encode_fail(lua_State *L, const b24_buf *where, const char *what)
{
    return luaL_error(L, "cannot encode %s at %s", what,
                      where->len ? where->p : "the top level");
}

void b24_check_plain(lua_State *L, const b24_buf *where, int t)
{
    if (lua_getmetatable(L, t))
        b24_encode_fail(L, where, "a table with a metatable");
    if (key_clash(L, t))
        b24_encode_fail(L, where, lua_pushfstring(L, "two keys written \"%s\"",
                                                  lua_tostring(L, -1)));
}
