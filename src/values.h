/* Reading Lua values the same way in both encoders (json.c, query.c). */
#ifndef B24_VALUES_H
#define B24_VALUES_H

#include <stddef.h>
#include <lua.h>

#include "buffer.h"

/* Whether the table at t has keys exactly 1..n. */
int b24_is_sequence(lua_State *L, int t);

/* Writes the number at idx into out (size >= 32): integers without a
 * fraction, other numbers with the fewest digits that read back the same
 * double. Returns the length, or 0 for NaN and infinities, which neither
 * JSON nor PHP can take. */
size_t b24_format_number(lua_State *L, int idx, char *out, size_t size);

/* Raises "cannot encode <what> at <where>", where is the key path written
 * so far (empty: the top level). */
int b24_encode_fail(lua_State *L, const b24_buf *where, const char *what);

/* Raises (b24_encode_fail) unless the table at t is plain: the checks in
 * Lua read through __index (and pairs through __pairs) while the encoders
 * read raw keys, so a metatable could make what was checked differ from
 * what is sent. A number key whose text is also a string key
 * ({[1] = "a", ["1"] = "b"}) would send one name twice: refused too. */
void b24_check_plain(lua_State *L, const b24_buf *where, int t);

#endif
