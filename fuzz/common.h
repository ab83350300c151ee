/* Shared pieces of the libFuzzer targets (see README.md): one Lua 5.4
 * state per process, b24_fuzz_L, made by LLVMFuzzerInitialize below (a
 * target that defines B24_FUZZ_DECODER before including this gets
 * cjson's decode at stack index 1, loaded with b24_json_push_decoder as
 * core.c does), the end of every run (b24_fuzz_end), and a builder that
 * turns any byte string into a Lua value.
 *
 * The builder reads a lenient JSON: every JSON document (the docs'
 * examples, real answers) is a valid input, any other byte string still
 * builds something, and a few extra letters build what JSON cannot hold:
 *   N  NaN          I  +inf          i  -inf           F  a function
 *   U  a userdata   T  a thread      L  a light userdata (not NULL)
 *   C  the innermost enclosing table (a cycle), when cycles are allowed
 *   n  null (cjson.null, the NULL light userdata)
 * Strings run to the next unescaped '"' and keep any bytes (NUL,
 * invalid UTF-8); "\x" stands for x. Numbers without '.', 'e' or 'E'
 * that fit become integers, others floats (strtod: 1e999 is inf). Nesting
 * deeper than max_depth is cut. Nothing here raises on input. */
#ifndef B24_FUZZ_COMMON_H
#define B24_FUZZ_COMMON_H

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#ifdef B24_FUZZ_DECODER
#include "json.h"
#endif

typedef struct {
    const char *p, *end;
    int depth, max_depth, cycles;
} b24_reader;

static lua_State *b24_fuzz_L;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    b24_fuzz_L = luaL_newstate();
    if (!b24_fuzz_L)
        abort();
    luaL_openlibs(b24_fuzz_L);
#ifdef B24_FUZZ_DECODER
    b24_json_push_decoder(b24_fuzz_L); /* stack index 1 */
#endif
    return 0;
}

/* The end of every run: the stack back to top, and a full collection
 * now and then, so garbage of many runs does not pile up. */
static void b24_fuzz_end(lua_State *L, int top)
{
    static unsigned runs;
    lua_settop(L, top);
    if (++runs % 256 == 0)
        lua_gc(L, LUA_GCCOLLECT, 0);
}

static int dummy_function(lua_State *L)
{
    (void)L;
    return 0;
}

static void skip_space(b24_reader *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' ||
                             *r->p == '\r' || *r->p == ',' || *r->p == ':'))
        r->p++;
}

static void push_string(lua_State *L, b24_reader *r)
{
    luaL_Buffer b;
    r->p++; /* the opening quote */
    luaL_buffinit(L, &b);
    while (r->p < r->end && *r->p != '"') {
        if (*r->p == '\\' && r->p + 1 < r->end)
            r->p++;
        luaL_addchar(&b, *r->p);
        r->p++;
    }
    if (r->p < r->end)
        r->p++;
    luaL_pushresult(&b);
}

static void push_number(lua_State *L, b24_reader *r)
{
    char text[64];
    size_t n = 0;
    int is_float = 0;
    while (r->p < r->end && n < sizeof text - 1 &&
           strchr("0123456789+-.eE", *r->p) && *r->p) {
        if (*r->p == '.' || *r->p == 'e' || *r->p == 'E')
            is_float = 1;
        text[n++] = *r->p++;
    }
    text[n] = '\0';
    if (!is_float) {
        char *end;
        long long v = strtoll(text, &end, 10);
        if (end != text && *end == '\0' && v != LLONG_MAX && v != LLONG_MIN) {
            lua_pushinteger(L, (lua_Integer)v);
            return;
        }
    }
    lua_pushnumber(L, (lua_Number)strtod(text, NULL));
}

/* Pushes one value, or nothing (returns 0) at the end of the input or at a
 * closing bracket, which it consumes. */
static int b24_read_value(lua_State *L, b24_reader *r);

static void read_container(lua_State *L, b24_reader *r, int is_object)
{
    lua_Integer next = 1;
    int t;
    lua_newtable(L);
    t = lua_gettop(L);
    if (r->depth >= r->max_depth || !lua_checkstack(L, 8))
        return;
    r->depth++;
    for (;;) {
        skip_space(r);
        if (!b24_read_value(L, r))
            break;
        if (!is_object) {
            lua_rawseti(L, t, next++);
            continue;
        }
        skip_space(r);
        if (!b24_read_value(L, r)) {
            lua_pop(L, 1);
            break;
        }
        /* A key Lua cannot hold (nil is impossible here, NaN is) is dropped. */
        if (lua_type(L, -2) == LUA_TNUMBER && lua_tonumber(L, -2) != lua_tonumber(L, -2))
            lua_pop(L, 2);
        else
            lua_rawset(L, t);
    }
    r->depth--;
}

static int b24_read_value(lua_State *L, b24_reader *r)
{
    for (;;) {
        char c;
        skip_space(r);
        if (r->p >= r->end)
            return 0;
        c = *r->p;
        if (c == '{' || c == '[') {
            r->p++;
            read_container(L, r, c == '{');
            return 1;
        }
        if (c == '}' || c == ']') {
            r->p++;
            return 0;
        }
        if (c == '"') {
            push_string(L, r);
            return 1;
        }
        if ((c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.') {
            push_number(L, r);
            return 1;
        }
        r->p++;
        switch (c) {
        case 't': r->p += r->end - r->p >= 3 ? 3 : 0; lua_pushboolean(L, 1); return 1;
        case 'f': r->p += r->end - r->p >= 4 ? 4 : 0; lua_pushboolean(L, 0); return 1;
        case 'n': r->p += r->end - r->p >= 3 ? 3 : 0; lua_pushlightuserdata(L, NULL); return 1;
        case 'N': lua_pushnumber(L, (lua_Number)NAN); return 1;
        case 'I': lua_pushnumber(L, (lua_Number)HUGE_VAL); return 1;
        case 'i': lua_pushnumber(L, (lua_Number)-HUGE_VAL); return 1;
        case 'F': lua_pushcfunction(L, dummy_function); return 1;
        case 'U': lua_newuserdata(L, 8); return 1;
        case 'T': lua_newthread(L); return 1;
        case 'L': lua_pushlightuserdata(L, (void *)r); return 1;
        case 'C':
            if (r->cycles && r->depth > 0) {
                /* The innermost open table: the one just below the
                 * pending key (object) or on the top (array). */
                int i = lua_gettop(L);
                while (i > 0 && lua_type(L, i) != LUA_TTABLE)
                    i--;
                if (i > 0) {
                    lua_pushvalue(L, i);
                    return 1;
                }
            }
            break;
        default:
            break; /* anything else is skipped */
        }
    }
}

/* Aborts (a finding) when the table at idx, or one inside it, holds a
 * float that the integer walk should have turned into an integer. */
static void b24_fuzz_check_normalized(lua_State *L, int idx, int depth)
{
    idx = lua_absindex(L, idx);
    if (depth > 2000 || !lua_checkstack(L, 4))
        abort();
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
            lua_Number n = lua_tonumber(L, -1);
            lua_Integer i;
            if (lua_numbertointeger(n, &i) && (lua_Number)i == n)
                abort();
        } else if (lua_type(L, -1) == LUA_TTABLE) {
            b24_fuzz_check_normalized(L, -1, depth + 1);
        }
        lua_pop(L, 1);
    }
}

/* Pushes the value built from data (nil when the input holds none). */
static void b24_fuzz_value(lua_State *L, const uint8_t *data, size_t size,
                           int max_depth, int cycles)
{
    b24_reader r;
    r.p = (const char *)data;
    r.end = r.p + size;
    r.depth = 0;
    r.max_depth = max_depth;
    r.cycles = cycles;
    if (!b24_read_value(L, &r))
        lua_pushnil(L);
}

#endif
