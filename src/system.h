/* Sleep, clocks, file locks and atomic writes for state shared between
 * processes. */
#ifndef B24_SYSTEM_H
#define B24_SYSTEM_H

#include <lua.h>

/* The longest wait any timeout or sleep may ask for: a day. */
#define B24_MAX_SECONDS 86400

void b24_system_register(lua_State *L);

/* Seconds on a clock that never jumps back (core.monotonic). */
double b24_monotonic(void);

#endif
