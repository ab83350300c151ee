/* JSON both ways: Lua values -> request bodies (numbers exact, UTF-8
 * checked) and JSON text -> Lua values (cjson, integers kept integers). */
#ifndef B24_JSON_H
#define B24_JSON_H

#include <stddef.h>
#include <lua.h>

/* Pushes the decode function of a private lua-cjson instance, the
 * decode_idx of the functions below (raises when cjson is missing). */
void b24_json_push_decoder(lua_State *L);

/* Decodes text with the cjson decode function at stack index decode_idx,
 * in protected mode. Returns 1 and leaves the value (integral numbers as
 * integers) on the stack, or returns 0 and leaves cjson's message. Never
 * raises for anything the text contains. */
int b24_json_parse(lua_State *L, int decode_idx, const char *text, size_t len);

/* core.json_encode(value) -> JSON text; raises naming the key of what
 * cannot be encoded. */
int b24_json_encode(lua_State *L);

/* core.json_decode(text) -> value | nil, message; upvalue 1 is cjson's
 * decode. */
int b24_json_decode(lua_State *L);

#endif
