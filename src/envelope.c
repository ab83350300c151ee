/* Bitrix24 answers: JSON text -> Lua values -> envelope or error.
 *
 * Bitrix24 sends errors with HTTP 200 and successes never carry an "error"
 * key, so the body decides, not the status; a non-2xx status without an
 * error envelope (a proxy's HTML page, an empty 500) is still an error. */
#include <string.h>

#include "compat.h"
#include "envelope.h"

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

/* Runs cjson's decode in protected mode: it raises on bad JSON, and a
 * raise must not unwind through our caller (which may hold curl state).
 * Leaves the value (normalised) or the error message on the stack. */
static int decode_json(lua_State *L, int decode_idx, const char *text,
                       size_t len)
{
    lua_pushvalue(L, decode_idx);
    lua_pushlstring(L, text, len);
    if (lua_pcall(L, 1, 1, 0) != 0)
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

static int push_failure(lua_State *L, const char *code, long status,
                        int envelope_idx)
{
    /* The description is on the top of the stack. */
    int desc = lua_gettop(L);
    lua_pushnil(L);
    lua_pushstring(L, code);
    lua_pushvalue(L, desc);
    lua_pushinteger(L, (lua_Integer)status);
    if (envelope_idx)
        lua_pushvalue(L, envelope_idx);
    else
        lua_pushnil(L);
    return 5;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* An error envelope: {"error": "<code>", "error_description": "..."}.
 * The code can be "" (FACTS §7) and stays "". REST 3.0 nests it as
 * {"error": {"code", "message"}}; take the same two pieces from there. */
static int push_portal_error(lua_State *L, long status, int env)
{
    const char *code = "";
    lua_getfield(L, env, "error");
    if (lua_type(L, -1) == LUA_TTABLE) {
        lua_getfield(L, -1, "code");
        lua_getfield(L, -2, "message");
    } else {
        lua_pushvalue(L, -1);
        lua_getfield(L, env, "error_description");
    }
    /* Stack: error, code-ish, description-ish. */
    if (lua_type(L, -2) == LUA_TSTRING || lua_type(L, -2) == LUA_TNUMBER)
        code = lua_tostring(L, -2);
    if (lua_type(L, -1) != LUA_TSTRING || b24_rawlen(L, -1) == 0) {
        /* Say what came rather than nothing: {"error": null} or
         * {"error": false} would otherwise read as an empty error. */
        int t;
        lua_pop(L, 1);
        t = lua_type(L, -1);
        if (t == LUA_TSTRING || t == LUA_TNUMBER)
            lua_pushfstring(L, "HTTP %d answer with error \"%s\" and no description",
                            (int)status, lua_tostring(L, -1));
        else
            lua_pushfstring(L, "HTTP %d answer with error %s and no description", (int)status,
                            t == LUA_TBOOLEAN ? (lua_toboolean(L, -1) ? "true" : "false")
                            : t == LUA_TTABLE ? "{...}" : "null");
    }
    lua_pushnil(L);
    lua_pushstring(L, code);
    lua_pushvalue(L, -3);
    lua_pushinteger(L, (lua_Integer)status);
    lua_pushvalue(L, env);
    return 5;
}

int b24_envelope_push(lua_State *L, int decode_idx, long status,
                      const char *body, size_t len)
{
    size_t i = 0;
    int env;

    while (i < len && is_space(body[i]))
        i++;
    if (i == len) {
        lua_pushfstring(L, "HTTP %d with an empty body", (int)status);
        return push_failure(L, B24_E_BAD_RESPONSE, status, 0);
    }
    if (body[i] != '{') {
        lua_pushfstring(L, "HTTP %d answer is not a JSON envelope (%d bytes)",
                        (int)status, (int)len);
        return push_failure(L, B24_E_BAD_RESPONSE, status, 0);
    }
    if (!decode_json(L, decode_idx, body, len)) {
        lua_pushfstring(L, "HTTP %d answer is not valid JSON (%d bytes): %s",
                        (int)status, (int)len, lua_tostring(L, -1));
        return push_failure(L, B24_E_BAD_RESPONSE, status, 0);
    }
    env = lua_gettop(L);
    if (lua_type(L, env) != LUA_TTABLE) {
        lua_pushfstring(L, "HTTP %d answer is not a JSON object", (int)status);
        return push_failure(L, B24_E_BAD_RESPONSE, status, 0);
    }
    lua_getfield(L, env, "error");
    if (!lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return push_portal_error(L, status, env);
    }
    lua_pop(L, 1);
    if (status < 200 || status > 299) {
        lua_pushfstring(L, "HTTP %d without an error code", (int)status);
        return push_failure(L, B24_E_BAD_RESPONSE, status, env);
    }
    lua_getfield(L, env, "result");
    if (lua_isnil(L, -1)) {
        lua_pushfstring(L, "HTTP %d answer has neither result nor error",
                        (int)status);
        return push_failure(L, B24_E_BAD_RESPONSE, status, env);
    }
    lua_pop(L, 1);
    lua_pushinteger(L, (lua_Integer)status);
    return 2;
}

int b24_json_push(lua_State *L, int decode_idx, const char *text, size_t len)
{
    if (decode_json(L, decode_idx, text, len))
        return 1;
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
}

/* core.decode(status, body): the envelope logic on its own, for
 * transports that do their I/O elsewhere (nginx cosockets). */
int b24_decode(lua_State *L)
{
    size_t len;
    long status = (long)luaL_checkinteger(L, 1);
    const char *body = luaL_checklstring(L, 2, &len);
    return b24_envelope_push(L, lua_upvalueindex(1), status, body, len);
}

/* core.json_decode(text): JSON with integers kept integers, or nil, err. */
int b24_json_decode(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    return b24_json_push(L, lua_upvalueindex(1), text, len);
}
