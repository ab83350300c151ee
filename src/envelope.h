/* Turning an HTTP answer into a Bitrix24 envelope (or an error). */
#ifndef B24_ENVELOPE_H
#define B24_ENVELOPE_H

#include <stddef.h>
#include <lua.h>

/* The client's own error codes, for failures Bitrix24 gave no code for.
 * The Lua layer documents them; keep the two lists in step. */
#define B24_E_NETWORK "NETWORK_ERROR"
#define B24_E_TIMEOUT "TIMEOUT"
#define B24_E_TLS "TLS_ERROR"
#define B24_E_BAD_RESPONSE "BAD_RESPONSE"
#define B24_E_MOVED "PORTAL_MOVED"
#define B24_E_TOO_LARGE "RESPONSE_TOO_LARGE"

/* Decodes body with the cjson decode function at stack index decode_idx
 * and pushes either (envelope, status) or
 * (nil, code, description, status, envelope-or-nil). Returns the number of
 * values pushed. Never raises for anything the body contains. */
int b24_envelope_push(lua_State *L, int decode_idx, long status,
                      const char *body, size_t len);

/* Decodes JSON text with the decode function at decode_idx and pushes the
 * value with integral numbers as integers, or (nil, message). */
int b24_json_push(lua_State *L, int decode_idx, const char *text, size_t len);

/* Lua functions registered by core.c; upvalue 1 is cjson's decode. */
int b24_decode(lua_State *L);
int b24_json_decode(lua_State *L);

#endif
