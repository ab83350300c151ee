/* The bytes of one HTTP answer as libcurl hands them over, for core.http
 * (http.c) and core.multi (multi.c) alike: the body, the header bytes
 * counted against max_response, and when a large buffer is given back. */
#ifndef B24_ANSWER_H
#define B24_ANSWER_H

#include <stddef.h>

#include <curl/curl.h>

#include "buffer.h"

typedef struct {
    b24_buf body;
    size_t max;          /* max_response: header and body bytes together */
    size_t header_len;   /* header bytes of the current answer */
    int too_large;       /* the transfer stopped at max */
} b24_answer;

/* Points the easy handle's body and header callbacks at a. */
CURLcode b24_answer_attach(CURL *curl, b24_answer *a);

/* Empties a for the next transfer (the buffer is kept). */
void b24_answer_start(b24_answer *a);

/* Once the answer is in Lua: frees a buffer that grew past 1 MiB. */
void b24_answer_release(b24_answer *a);

/* Frees the buffer; a stays usable. */
void b24_answer_free(b24_answer *a);

#endif
