/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The WebSocket side of the module: frame headers from clients, unmasking,
 * close payloads, the UTF-8 check of text and close reasons, and the
 * varint OpAMP header in front of each AgentToServer
 * (ngx_http_opamp_ws_message() in websocket_read.c decodes it).  The first
 * input byte picks what the rest is: even, a client frame (header and
 * payload); odd, an OpAMP message with its header.
 *
 * Invariants checked:
 *   - a header that parses is 2 to 14 bytes and within the input, masked,
 *     with a known opcode, control frames unfragmented and at most 125
 *     bytes; writing the same header back with
 *     ngx_http_opamp_wsframe_header() gives the same bytes (the length
 *     was minimal); every prefix of it asks for more bytes (0) and none
 *     is refused;
 *   - unmasking twice gives the payload back, and unmasking in two pieces
 *     (with the offset of the second) equals unmasking at once;
 *   - a close payload is accepted only with a code a client may send and
 *     a UTF-8 reason; the WebSocket UTF-8 check and the module's strict
 *     UTF-8 check (ngx_http_opamp_utf8_valid) agree on every input;
 *   - a varint that decodes encodes back to at most as many bytes and
 *     decodes to the same value; one of ten bytes or more that does not
 *     end by its tenth byte is refused.
 */


#include <ngx_config.h>
#include <ngx_core.h>

#include "ngx_http_opamp_wsframe.h"
#include "ngx_http_opamp_utf8.h"
#include "shim.h"


static void
fuzz_frame(u_char *buf, size_t len)
{
    int                        rc, k, code;
    u_char                     out[NGX_HTTP_OPAMP_WS_MAX_HEADER];
    u_char                    *pl, *one, *two;
    size_t                     n, plen, hlen, split;
    ngx_http_opamp_wsframe_t   f;

    rc = ngx_http_opamp_wsframe_parse(&f, buf, len);

    if (rc <= 0) {
        FUZZ_CHECK(rc == 0 || rc == -NGX_HTTP_OPAMP_WS_CLOSE_PROTOCOL_ERROR,
                   "a header refused with another code than 1002");
        return;
    }

    hlen = (size_t) rc;

    FUZZ_CHECK(hlen >= 2 && hlen <= NGX_HTTP_OPAMP_WS_MAX_HEADER
               && hlen <= len && f.header_len == hlen,
               "header length");
    FUZZ_CHECK(f.masked, "an unmasked client frame parsed");
    FUZZ_CHECK(f.opcode <= 2 || (f.opcode >= 8 && f.opcode <= 10),
               "unknown opcode parsed");
    FUZZ_CHECK(!(f.opcode & 8) || (f.fin && f.payload_len <= 125),
               "a fragmented or long control frame parsed");
    FUZZ_CHECK(f.payload_len < (1ULL << 63), "64-bit length with bit 63");

    n = ngx_http_opamp_wsframe_header(out, f.opcode, f.fin, f.payload_len);

    FUZZ_CHECK(n + 4 == hlen && out[0] == buf[0]
               && (out[1] | 0x80) == buf[1]
               && memcmp(out + 2, buf + 2, n - 2) == 0
               && memcmp(f.mask, buf + n, 4) == 0,
               "the header written back differs: length not minimal");

    for (k = 0; k < rc; k++) {
        FUZZ_CHECK(ngx_http_opamp_wsframe_parse(&f, buf, k) == 0,
                   "a prefix of a valid header is refused or complete");
    }

    ngx_http_opamp_wsframe_parse(&f, buf, len);

    pl = buf + hlen;
    plen = ngx_min((uint64_t) (len - hlen), f.payload_len);

    one = malloc(plen ? plen : 1);
    two = malloc(plen ? plen : 1);
    FUZZ_CHECK(one && two, "malloc");

    memcpy(one, pl, plen);
    memcpy(two, pl, plen);

    ngx_http_opamp_wsframe_unmask(one, plen, f.mask, 0);

    split = plen ? buf[0] % (plen + 1) : 0;
    ngx_http_opamp_wsframe_unmask(two, split, f.mask, 0);
    ngx_http_opamp_wsframe_unmask(two + split, plen - split, f.mask, split);

    FUZZ_CHECK(memcmp(one, two, plen) == 0,
               "unmasking in two pieces differs");

    memcpy(two, one, plen);
    ngx_http_opamp_wsframe_unmask(two, plen, f.mask, 0);
    FUZZ_CHECK(memcmp(two, pl, plen) == 0, "unmasking twice differs");

    FUZZ_CHECK(!ngx_http_opamp_wsframe_utf8_valid(one, plen)
               == !ngx_http_opamp_utf8_valid(one, plen),
               "the two UTF-8 checks disagree");

    if (f.opcode == NGX_HTTP_OPAMP_WS_OP_CLOSE) {
        code = ngx_http_opamp_wsframe_close_payload(one, plen);

        if (code > 0) {
            FUZZ_CHECK((plen == 0 && code == 1005)
                       || (plen >= 2 && plen <= 125
                           && code == ((one[0] << 8) | one[1])
                           && ((code >= 1000 && code <= 1003)
                               || (code >= 1007 && code <= 1011)
                               || (code >= 3000 && code <= 4999))
                           && ngx_http_opamp_utf8_valid(one + 2, plen - 2)),
                       "a close payload accepted that breaks a rule");

        } else {
            FUZZ_CHECK(code == -NGX_HTTP_OPAMP_WS_CLOSE_PROTOCOL_ERROR
                       || code == -NGX_HTTP_OPAMP_WS_CLOSE_INVALID_DATA,
                       "a close payload refused with another code");
        }
    }

    free(two);
    free(one);
}


static void
fuzz_varint(u_char *buf, size_t len)
{
    int       n, m;
    size_t    i;
    u_char    out[10];
    uint64_t  v, w;

    n = ngx_http_opamp_varint_decode(buf, len, &v);

    if (n < 0) {
        FUZZ_CHECK(n == -1, "varint error code");

        /* refused: truncated, or not ended by the tenth byte, or a tenth
         * byte over 1 */
        for (i = 0; i < len && i < 10 && (buf[i] & 0x80); i++) {
            /* void */
        }

        FUZZ_CHECK(i == len || i == 10 || (i == 9 && buf[9] > 1),
                   "a valid varint refused");
        return;
    }

    FUZZ_CHECK(n >= 1 && n <= 10 && (size_t) n <= len, "varint length");

    m = (int) ngx_http_opamp_varint_encode(out, v);

    FUZZ_CHECK(m >= 1 && m <= n, "re-encoded varint longer");
    FUZZ_CHECK(ngx_http_opamp_varint_decode(out, m, &w) == m && w == v,
               "re-encoded varint decodes to another value");

    if (buf[n - 1] != 0 || n == 1) {
        /* no redundant high zero group: the encoding was minimal */
        FUZZ_CHECK(m == n && memcmp(out, buf, n) == 0,
                   "a minimal varint re-encodes to other bytes");
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char  *buf;

    if (size == 0) {
        return 0;
    }

    buf = malloc(size - 1 ? size - 1 : 1);
    FUZZ_CHECK(buf != NULL, "malloc");
    memcpy(buf, data + 1, size - 1);

    if (data[0] & 1) {
        fuzz_varint(buf, size - 1);

    } else {
        fuzz_frame(buf, size - 1);
    }

    free(buf);

    return 0;
}
