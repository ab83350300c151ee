/* Lua params -> the PHP-style query string of a batch command:
 *   { id = 1, fields = { CONTACT_ID = 5 }, items = { { SORT = 10 } } }
 *   -> "fields[CONTACT_ID]=5&id=1&items[0][SORT]=10"
 *
 * Names and values are percent-encoded once (RFC 3986 unreserved
 * characters stay); brackets stay literal, as in Bitrix24's docs. Keys
 * PHP would read as another name are refused (see check_key). Arrays
 * (keys 1..n) get 0-based indexes; map keys are sorted so the same params
 * always give the same string. A value that is a batch reference
 * ($result[cmd][0][ID], also $next, $total, $time, $error) is passed
 * through untouched, because the server substitutes it in the raw text.
 *
 * The output grows in buffers owned by a userdata (buffer.h), so
 * luaL_error can be raised anywhere (a function in the params, a cycle)
 * without a leak. */
#include <stdlib.h>
#include <string.h>

#include "buffer.h"
#include "compat.h"
#include "query.h"
#include "values.h"

#define MAX_DEPTH 32

/* The output and the key of the value being written ("fields[X]"). */
typedef struct {
    b24_buf *out, *key;   /* the two buffers of one userdata */
} bufs;

#define add b24_buf_add

static void add_escaped(lua_State *L, b24_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
            c == '~') {
            add(L, b, s + i, 1);
        } else {
            char e[3];
            e[0] = '%';
            e[1] = hex[c >> 4];
            e[2] = hex[c & 15];
            add(L, b, e, 3);
        }
    }
}

/* "$result[key]..." and its siblings, made only of safe characters. */
static int is_reference(const char *s, size_t n)
{
    static const char *const names[] = {"$result[", "$next[", "$total[",
                                         "$time[", "$error[", NULL};
    int i;
    size_t j;
    for (i = 0; names[i]; i++)
        if (n > strlen(names[i]) && !strncmp(s, names[i], strlen(names[i])))
            break;
    if (!names[i] || s[n - 1] != ']')
        return 0;
    for (j = 1; j < n; j++) {
        char c = s[j];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '[' || c == ']' ||
              c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

/* Appends "key=" then the value; the key is b->key-> */
static void add_pair(lua_State *L, bufs *b, const char *v, size_t n, int raw)
{
    if (b->out->len)
        add(L, b->out, "&", 1);
    add(L, b->out, b->key->p, b->key->len);
    add(L, b->out, "=", 1);
    if (raw)
        add(L, b->out, v, n);
    else
        add_escaped(L, b->out, v, n);
}

static size_t format_number(lua_State *L, bufs *b, int idx, char *out,
                            size_t size)
{
    size_t n = b24_format_number(L, idx, out, size);
    if (!n)
        b24_encode_fail(L, b->key, "a NaN or infinite number");
    return n;
}

static void encode_value(lua_State *L, bufs *b, int depth);

/* PHP's parse_str reads names after percent-decoding them, so a key
 * holding a bracket would be read as nesting ("fields[TITLE]" beside
 * fields = {TITLE = ...}: one name, one value lost), and at the top level
 * it turns "." and " " into "_" ("a.b" beside a_b). Such keys are a
 * programmer error, raised naming the key. */
static void check_key(lua_State *L, bufs *b, const char *k, size_t kn, int depth)
{
    const char *why = NULL;
    size_t i;
    for (i = 0; i < kn && !why; i++) {
        if (k[i] == '[' || k[i] == ']')
            why = "PHP reads brackets in a name as nesting";
        else if (depth == 0 && (k[i] == '.' || k[i] == ' '))
            why = "PHP reads a dot or a space in a top-level name as \"_\"";
    }
    if (why)
        b24_encode_fail(L, b->key, lua_pushfstring(L, "the key \"%s\" (%s)", k, why));
}

/* Encodes the value on the top of the stack under key + [k]; pops it. */
static void encode_child(lua_State *L, bufs *b, const char *k, size_t kn,
                         int depth)
{
    size_t mark = b->key->len;
    if (depth > 0)
        add(L, b->key, "[", 1);
    add_escaped(L, b->key, k, kn);
    if (depth > 0)
        add(L, b->key, "]", 1);
    encode_value(L, b, depth + 1);
    b24_buf_truncate(b->key, mark);
}

/* A key as text (with its length: a Lua string may hold NUL bytes) and
 * where the original key sits in the anchor table, so the value is looked
 * up by the key itself, not by a conversion of its text. */
typedef struct {
    const char *s;
    size_t len;
    int slot;
} sort_key;

static int compare_keys(const void *x, const void *y)
{
    const sort_key *a = x, *b = y;
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->s, b->s, n);
    if (c)
        return c;
    if (a->len == b->len)
        return 0; /* cannot happen: b24_check_plain refused "1" beside 1 */
    return a->len < b->len ? -1 : 1;
}

/* The table's keys sorted as text, so equal params always encode the
 * same. Pushes an anchor table holding the texts and the keys; the
 * caller pops it. */
static sort_key *sorted_keys(lua_State *L, bufs *b, int t, size_t *count)
{
    size_t n = 0, i = 0;
    sort_key *keys;
    char num[64];

    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        n++;
    }
    lua_createtable(L, 0, 1);
    keys = lua_newuserdata(L, (n ? n : 1) * sizeof *keys);
    lua_setfield(L, -2, "keys");
    lua_pushnil(L);
    while (lua_next(L, t)) {
        int slot;
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TNUMBER) {
            size_t len = format_number(L, b, -1, num, sizeof num);
            lua_pushlstring(L, num, len);
        } else if (lua_type(L, -1) == LUA_TSTRING) {
            lua_pushvalue(L, -1);
        } else {
            b24_encode_fail(L, b->key, "a key that is not a string or a number");
        }
        keys[i].s = lua_tolstring(L, -1, &keys[i].len);
        slot = (int)(2 * i + 1);
        keys[i].slot = slot + 1;
        lua_rawseti(L, -3, slot);       /* anchor[slot] = text */
        lua_pushvalue(L, -1);
        lua_rawseti(L, -3, slot + 1);   /* anchor[slot + 1] = the key */
        i++;
    }
    qsort(keys, i, sizeof *keys, compare_keys);
    *count = i;
    return keys;
}

static void encode_table(lua_State *L, bufs *b, int depth)
{
    int t = lua_gettop(L);

    if (depth > MAX_DEPTH)
        b24_encode_fail(L, b->key, "a table nested too deep (a cycle?)");
    if (!lua_checkstack(L, 8))
        b24_encode_fail(L, b->key, "a table nested too deep");
    b24_check_plain(L, b->key, t);
    if (b24_is_sequence(L, t)) {
        size_t i, n = b24_rawlen(L, t);
        char num[64];
        for (i = 1; i <= n; i++) {
            lua_rawgeti(L, t, (int)i);
            encode_child(L, b, num,
                         (size_t)snprintf(num, sizeof num, "%d", (int)i - 1),
                         depth);
        }
    } else {
        size_t i, n;
        int anchor;
        const sort_key *keys = sorted_keys(L, b, t, &n);
        anchor = lua_gettop(L);
        for (i = 0; i < n; i++) {
            check_key(L, b, keys[i].s, keys[i].len, depth);
            lua_rawgeti(L, anchor, keys[i].slot);
            lua_rawget(L, t);
            encode_child(L, b, keys[i].s, keys[i].len, depth);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static void encode_value(lua_State *L, bufs *b, int depth)
{
    char num[64];
    size_t n;
    const char *s;

    switch (lua_type(L, -1)) {
    case LUA_TTABLE:
        encode_table(L, b, depth);
        return;
    case LUA_TSTRING:
        s = lua_tolstring(L, -1, &n);
        add_pair(L, b, s, n, is_reference(s, n));
        break;
    case LUA_TNUMBER:
        n = format_number(L, b, -1, num, sizeof num);
        add_pair(L, b, num, n, 1);
        break;
    case LUA_TBOOLEAN:
        add_pair(L, b, lua_toboolean(L, -1) ? "1" : "0", 1, 1);
        break;
    case LUA_TLIGHTUSERDATA:
        /* cjson.null: PHP reads an empty value as "". */
        if (lua_touserdata(L, -1) == NULL) {
            add_pair(L, b, "", 0, 1);
            break;
        }
        /* fall through */
    default:
        b24_encode_fail(L, b->key, luaL_typename(L, -1));
    }
    lua_pop(L, 1);
}

/* core.query(params) -> "a=1&b[c]=2" */
int b24_query(lua_State *L)
{
    b24_buf *owned;
    bufs bs, *b = &bs;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    owned = b24_bufs_new(L, 2);
    b->out = &owned[0];
    b->key = &owned[1];
    lua_pushvalue(L, 1);
    encode_value(L, b, 0);
    lua_pushlstring(L, b->out->p, b->out->len);
    b24_bufs_free(owned, 2);
    return 1;
}
