/* Turning an HTTP answer into a Bitrix24 envelope (or a failure). */
#ifndef B24_ENVELOPE_H
#define B24_ENVELOPE_H

#include <stddef.h>
#include <lua.h>

/* Decodes body with the cjson decode function at stack index decode_idx
 * and pushes either (envelope, status) or (nil, failure) (failure.h).
 * Returns 2, the number of values pushed. Never raises for anything the
 * body contains. */
int b24_envelope_push(lua_State *L, int decode_idx, long status,
                      const char *body, size_t len);

/* core.envelope(status, body); upvalue 1 is cjson's decode. */
int b24_envelope(lua_State *L);

#endif
