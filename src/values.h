/* Reading Lua values the same way in both encoders (json.c, query.c). */
#ifndef B24_VALUES_H
#define B24_VALUES_H

#include <stddef.h>
#include <lua.h>

/* Whether the table at t has keys exactly 1..n. */
int b24_is_sequence(lua_State *L, int t);

/* Writes the number at idx into out (size >= 32): integers without a
 * fraction, other numbers with the fewest digits that read back the same
 * double. Returns the length, or 0 for NaN and infinities, which neither
 * JSON nor PHP can take. */
size_t b24_format_number(lua_State *L, int idx, char *out, size_t size);

/* Whether the table at t holds a number key whose text, as the encoders
 * write it, is also one of its string keys: {[1] = "a", ["1"] = "b"}
 * would send the name "1" twice. On a clash, pushes that text and
 * returns 1; otherwise pushes nothing and returns 0. */
int b24_key_clash(lua_State *L, int t);

#endif
