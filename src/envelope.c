/* Bitrix24 answers: JSON text -> Lua values -> envelope or error.
 *
 * Bitrix24 sends errors with HTTP 200 and successes never carry an "error"
 * key, so the body decides, not the status; a non-2xx status without an
 * error envelope (a proxy's HTML page, an empty 500) is still an error. */

#include "compat.h"
#include "envelope.h"
#include "failure.h"
#include "json.h"

/* The description is on the top of the stack. */
static int push_failure(lua_State *L, const char *code, long status,
                        int envelope_idx)
{
    return b24_failure_push(L, code, lua_gettop(L), status, envelope_idx, NULL);
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
    return b24_failure_push(L, code, lua_gettop(L), status, env, NULL);
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
    if (!b24_json_parse(L, decode_idx, body, len)) {
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

/* core.envelope(status, body): the envelope logic on its own, for
 * transports that do their I/O elsewhere (nginx cosockets). */
int b24_envelope(lua_State *L)
{
    size_t len;
    long status = (long)luaL_checkinteger(L, 1);
    const char *body = luaL_checklstring(L, 2, &len);
    return b24_envelope_push(L, lua_upvalueindex(1), status, body, len);
}
