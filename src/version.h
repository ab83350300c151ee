/* The release, as bitrix24._VERSION in lua/bitrix24.lua says it (a spec
 * checks that they agree): core._VERSION and the default User-Agent. */
#ifndef B24_VERSION_H
#define B24_VERSION_H

#define B24_VERSION "0.2.0"

#endif
