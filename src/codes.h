/* The client's own error codes, for failures Bitrix24 gave no code for:
 * the envelope decoder and both libcurl paths use them. The Lua layer
 * documents them (lua/bitrix24/errors.lua); keep the two lists in step. */
#ifndef B24_CODES_H
#define B24_CODES_H

#define B24_E_NETWORK "NETWORK_ERROR"
#define B24_E_TIMEOUT "TIMEOUT"
#define B24_E_TLS "TLS_ERROR"
#define B24_E_BAD_RESPONSE "BAD_RESPONSE"
#define B24_E_MOVED "PORTAL_MOVED"
#define B24_E_TOO_LARGE "RESPONSE_TOO_LARGE"

#endif
