/* core.multi: many requests in flight over one libcurl multi handle. */
#ifndef B24_MULTI_H
#define B24_MULTI_H

#include <lua.h>

#define B24_MULTI_MT "bitrix24.multi"

/* Registers core.multi and its metatable into the module table below the
 * cjson decode function on the top of the stack; pops it. */
void b24_multi_register(lua_State *L);

#endif
