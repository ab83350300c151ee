/* One HTTP answer's bytes (see answer.h). The callbacks make no Lua
 * calls: a raise inside a libcurl callback would longjmp over libcurl's
 * frames. Returning less than given makes libcurl stop the transfer with
 * CURLE_WRITE_ERROR. */
#include <stdlib.h>

#include "answer.h"

/* All header lines of an answer, interim ones included: below libcurl's
 * own 300 KiB, so an answer with too many header bytes ends as
 * RESPONSE_TOO_LARGE here, as it does on the nginx transport. (A single
 * line is bounded by B24_MAX_HEADER_LINE, answer.h.) */
#define MAX_HEADER_BYTES ((size_t)256 * 1024)

/* The buffer is kept between answers so small ones need no allocation;
 * one grown past this for a large answer is given back once that answer
 * is in Lua, instead of staying (up to max_response) until close. */
#define KEEP_BUFFER ((size_t)1024 * 1024)

/* header_len + body.len <= max always holds: no underflow. */
static size_t room(const b24_answer *a)
{
    return a->max - a->header_len - a->body.len;
}

static size_t on_body(char *data, size_t size, size_t n, void *ud)
{
    b24_answer *a = ud;
    size_t add = size * n;

    if (add > room(a)) {
        a->too_large = 1;
        return 0;
    }
    return b24_buf_append(&a->body, data, add) ? add : 0;
}

static int is_blank_line(const char *line, size_t len)
{
    return len >= 1 && len <= 2 && (line[0] == '\r' || line[0] == '\n');
}

/* Header bytes count towards max_response, and a line is at most
 * B24_MAX_HEADER_LINE bytes, as on the nginx transport. libcurl hands
 * over whole lines, one a call; the LF is not counted, the CR is (as
 * nginx.lua counts the bytes before the LF). */
static size_t on_header(char *data, size_t size, size_t n, void *ud)
{
    b24_answer *a = ud;
    size_t add = size * n;

    if (add > B24_MAX_HEADER_LINE + 1) {
        a->long_line = 1;
        return 0;
    }
    if (add > MAX_HEADER_BYTES - a->header_len || add > room(a)) {
        a->too_large = 1;
        return 0;
    }
    a->header_len += add;
    /* A blank line ends a header block; an interim answer's (100
     * Continue) is followed by the next one, and trailers open one too. */
    a->in_headers = !is_blank_line(data, add);
    return add;
}

/* libcurl buffers a header line until its LF and refuses one over its
 * own limit (100 KiB in 7.88) before calling on_header, with
 * CURLE_OUT_OF_MEMORY ("Out of memory"). Ending so while a header block
 * is read is taken for that line: the same failure as any line over
 * B24_MAX_HEADER_LINE, as the nginx transport reports it. (Newer
 * libcurl says CURLE_TOO_LARGE.) */
int b24_answer_long_line(const b24_answer *a, CURLcode rc)
{
    if (a->long_line)
        return 1;
    if (!a->in_headers || a->body.len)
        return 0;
#if LIBCURL_VERSION_NUM >= 0x080600
    if (rc == CURLE_TOO_LARGE)
        return 1;
#endif
    return rc == CURLE_OUT_OF_MEMORY;
}

CURLcode b24_answer_attach(CURL *curl, b24_answer *a)
{
    CURLcode rc = curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_WRITEDATA, a);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(curl, CURLOPT_HEADERDATA, a);
    return rc;
}

void b24_answer_start(b24_answer *a)
{
    b24_buf_truncate(&a->body, 0);
    a->header_len = 0;
    a->too_large = 0;
    a->long_line = 0;
    a->in_headers = 1;
}

void b24_answer_release(b24_answer *a)
{
    if (a->body.cap > KEEP_BUFFER)
        b24_answer_free(a);
}

void b24_answer_free(b24_answer *a)
{
    b24_bufs_free(&a->body, 1);
}
