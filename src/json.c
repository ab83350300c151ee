/* JSON both ways (see json.h). Encoding: Lua params -> the JSON body of
 * a request. Decoding: cjson's decode, then integers made integers.
 *
 * Debian's lua-cjson 2.1.0 writes numbers with at most 14 significant
 * digits, so an id like 123456789012345 would leave as
 * 1.2345678901234e+14: a different number. Here integers are written
 * exactly and other numbers with enough digits to read back the same
 * double. Strings must be UTF-8 (PHP's json_decode drops a body that is
 * not, and Bitrix24 then reads no parameters at all), so bad bytes are an
 * error naming the key instead.
 *
 * Tables with keys 1..n are arrays, other tables objects; an empty table
 * is [] inside and {} at the top, where Bitrix24 expects an object. */
#include <stdio.h>
#include <string.h>

#include "buffer.h"
#include "compat.h"
#include "json.h"
#include "values.h"

#define MAX_DEPTH 32

typedef struct {
    b24_buf *out, *path;   /* the two buffers of one userdata */
} bufs;

#define add b24_buf_add

/* Length of the UTF-8 sequence starting at s (at most n bytes), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len, i;
    unsigned cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4, cp = c & 0x07;
    else
        return 0;
    if (len > n)
        return 0;
    for (i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    /* Overlong forms, surrogates and code points past U+10FFFF. */
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

static void add_string(lua_State *L, bufs *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i = 0, run = 0;
    add(L, b->out, "\"", 1);
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[6];
        size_t len = 1;
        if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c < 0x20) {
            u[0] = '\\', u[1] = 'u', u[2] = '0', u[3] = '0';
            u[4] = hex[c >> 4], u[5] = hex[c & 15];
        } else if (c >= 0x80) {
            len = utf8_len((const unsigned char *)s + i, n - i);
            if (!len)
                b24_encode_fail(L, b->path, "a string that is not UTF-8");
        }
        if (esc || c < 0x20) {
            add(L, b->out, s + i - run, run);
            run = 0;
            if (esc)
                add(L, b->out, esc, strlen(esc));
            else
                add(L, b->out, u, 6);
        } else {
            run += len;
        }
        i += len;
    }
    add(L, b->out, s + n - run, run);
    add(L, b->out, "\"", 1);
}

static void add_number(lua_State *L, bufs *b, int idx)
{
    char num[64];
    size_t n = b24_format_number(L, idx, num, sizeof num);
    if (!n)
        b24_encode_fail(L, b->path, "a NaN or infinite number");
    add(L, b->out, num, n);
}

static void encode_value(lua_State *L, bufs *b, int depth);

/* The key at -2 as a path step, for error messages. */
static void push_path(lua_State *L, bufs *b, int array_index)
{
    if (array_index) {
        char num[32];
        int n = snprintf(num, sizeof num, "[%d]", array_index);
        add(L, b->path, num, (size_t)n);
    } else {
        size_t n;
        const char *k;
        if (b->path->len)
            add(L, b->path, ".", 1);
        lua_pushvalue(L, -2);
        k = lua_tolstring(L, -1, &n);
        add(L, b->path, k, n);
        lua_pop(L, 1);
    }
}

static void encode_table(lua_State *L, bufs *b, int depth)
{
    int t = lua_gettop(L);
    size_t mark = b->path->len;

    if (depth > MAX_DEPTH)
        b24_encode_fail(L, b->path, "a table nested too deep (a cycle?)");
    if (!lua_checkstack(L, 6))
        b24_encode_fail(L, b->path, "a table nested too deep");
    b24_check_plain(L, b->path, t);
    if (b24_is_sequence(L, t) && (b24_rawlen(L, t) > 0 || depth > 0)) {
        size_t i, n = b24_rawlen(L, t);
        add(L, b->out, "[", 1);
        for (i = 1; i <= n; i++) {
            if (i > 1)
                add(L, b->out, ",", 1);
            lua_rawgeti(L, t, (int)i);
            push_path(L, b, (int)i);
            encode_value(L, b, depth + 1);
            b24_buf_truncate(b->path, mark);
        }
        add(L, b->out, "]", 1);
    } else {
        int first = 1;
        add(L, b->out, "{", 1);
        lua_pushnil(L);
        while (lua_next(L, t)) {
            int kt = lua_type(L, -2);
            if (kt != LUA_TSTRING && kt != LUA_TNUMBER)
                b24_encode_fail(L, b->path, "a key that is not a string or a number");
            if (!first)
                add(L, b->out, ",", 1);
            first = 0;
            if (kt == LUA_TSTRING) {
                size_t n;
                const char *k = lua_tolstring(L, -2, &n);
                add_string(L, b, k, n);
            } else {
                /* Number keys become strings without touching the key
                 * itself: lua_tolstring on it would confuse lua_next. */
                lua_pushvalue(L, -2);
                add(L, b->out, "\"", 1);
                add_number(L, b, -1);
                add(L, b->out, "\"", 1);
                lua_pop(L, 1);
            }
            add(L, b->out, ":", 1);
            push_path(L, b, 0);
            encode_value(L, b, depth + 1);
            b24_buf_truncate(b->path, mark);
        }
        add(L, b->out, "}", 1);
    }
    lua_pop(L, 1);
}

/* Encodes the value on the top of the stack and pops it. */
static void encode_value(lua_State *L, bufs *b, int depth)
{
    size_t n;
    const char *s;

    switch (lua_type(L, -1)) {
    case LUA_TTABLE:
        encode_table(L, b, depth);
        return;
    case LUA_TSTRING:
        s = lua_tolstring(L, -1, &n);
        add_string(L, b, s, n);
        break;
    case LUA_TNUMBER:
        add_number(L, b, -1);
        break;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, -1))
            add(L, b->out, "true", 4);
        else
            add(L, b->out, "false", 5);
        break;
    case LUA_TLIGHTUSERDATA:
        /* cjson.null */
        if (lua_touserdata(L, -1) == NULL) {
            add(L, b->out, "null", 4);
            break;
        }
        /* fall through */
    default:
        b24_encode_fail(L, b->path, luaL_typename(L, -1));
    }
    lua_pop(L, 1);
}

/* core.json_encode(value) -> JSON text; raises naming the key of what
 * cannot be encoded. */
int b24_json_encode(lua_State *L)
{
    b24_buf *owned;
    bufs bs, *b = &bs;
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    owned = b24_bufs_new(L, 2);
    b->out = &owned[0];
    b->path = &owned[1];
    lua_pushvalue(L, 1);
    encode_value(L, b, 0);
    lua_pushlstring(L, b->out->p, b->out->len);
    b24_bufs_free(owned, 2);
    return 1;
}

/* ------------------------------------------------------------ decoding */

#if B24_HAS_INTEGERS
/* Debian's lua-cjson 2.1.0 pushes every number as a float. Walk the
 * decoded tree and store integral floats back as integers, so ids and
 * counts compare and format as the integers they were in the JSON.
 * Depth is bounded by cjson's own nesting limit; lua_checkstack guards
 * the C stack of Lua values anyway instead of raising. */
static void normalize(lua_State *L)
{
    if (!lua_checkstack(L, 4))
        return;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        int type = lua_type(L, -1);
        if (type == LUA_TNUMBER && !lua_isinteger(L, -1)) {
            lua_Number n = lua_tonumber(L, -1);
            lua_Integer i;
            if (lua_numbertointeger(n, &i) && (lua_Number)i == n) {
                lua_pop(L, 1);
                lua_pushvalue(L, -1);
                lua_pushinteger(L, i);
                /* Assigning to an existing key is allowed during lua_next. */
                lua_rawset(L, -4);
                continue;
            }
        } else if (type == LUA_TTABLE) {
            normalize(L);
        }
        lua_pop(L, 1);
    }
}
#else
#define normalize(L) ((void)0)
#endif

/* A private cjson instance, so the caller's cjson settings (or ours)
 * never leak either way. */
void b24_json_push_decoder(lua_State *L)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "new");
    lua_call(L, 0, 1);
    lua_getfield(L, -1, "decode");
    lua_replace(L, -3);
    lua_pop(L, 1);
}

/* cjson raises on bad JSON: protected mode turns that into a broken
 * answer. Out of memory is not a broken answer (a read would be retried,
 * a write that ran reported as garbled): it is raised again, as any
 * allocation failure is. That is safe here: callers run this after the
 * transfer, with no libcurl frame below, and the buffers belong to
 * userdata that garbage collection frees. */
int b24_json_parse(lua_State *L, int decode_idx, const char *text, size_t len)
{
    int rc;
    lua_pushvalue(L, decode_idx);
    lua_pushlstring(L, text, len);
    rc = lua_pcall(L, 1, 1, 0);
    if (rc == LUA_ERRMEM)
        lua_error(L);
    if (rc != 0)
        return 0;
    if (lua_type(L, -1) == LUA_TTABLE)
        normalize(L);
#if B24_HAS_INTEGERS
    else if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
        lua_Integer i;
        lua_Number n = lua_tonumber(L, -1);
        if (lua_numbertointeger(n, &i) && (lua_Number)i == n) {
            lua_pop(L, 1);
            lua_pushinteger(L, i);
        }
    }
#endif
    return 1;
}

/* core.json_decode(text): JSON with integers kept integers, or nil, err. */
int b24_json_decode(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    if (b24_json_parse(L, lua_upvalueindex(1), text, len))
        return 1;
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
}
