/* Sleep, clocks, file locks and atomic writes for state shared between
 * processes. */
#ifndef B24_SYSTEM_H
#define B24_SYSTEM_H

#include <lua.h>

void b24_system_register(lua_State *L);

#endif
