/* The bytes of one HTTP answer as libcurl hands them over, for core.http
 * (http.c) and core.multi (multi.c) alike: the body, the header bytes
 * counted against max_response, and when a large buffer is given back. */
#ifndef B24_ANSWER_H
#define B24_ANSWER_H

#include <stddef.h>

#include <curl/curl.h>

#include "buffer.h"

/* The longest header line (status line, header, trailer) either
 * transport takes, its CRLF not counted: as the nginx transport's
 * MAX_LINE. */
#define B24_MAX_HEADER_LINE 16384

typedef struct {
    b24_buf body;
    size_t max;          /* max_response: header and body bytes together */
    size_t header_len;   /* header bytes of the current answer */
    int too_large;       /* the transfer stopped at max */
    int long_line;       /* the transfer stopped at a header line too long */
    int in_headers;      /* a header block is being read (no blank line yet) */
} b24_answer;

/* Whether a transfer that ended with rc stopped at a header line longer
 * than B24_MAX_HEADER_LINE. */
int b24_answer_long_line(const b24_answer *a, CURLcode rc);

/* Points the easy handle's body and header callbacks at a. */
CURLcode b24_answer_attach(CURL *curl, b24_answer *a);

/* Empties a for the next transfer (the buffer is kept). */
void b24_answer_start(b24_answer *a);

/* Once the answer is in Lua: frees a buffer that grew past 1 MiB. */
void b24_answer_release(b24_answer *a);

/* Frees the buffer; a stays usable. */
void b24_answer_free(b24_answer *a);

#endif
