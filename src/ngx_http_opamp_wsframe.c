/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * WebSocket frame and OpAMP header codec (RFC 6455, OpAMP specification
 * "WebSocket Message Format").  Nothing here knows about nginx: the
 * functions work on plain bytes so that t/unit can test them alone.
 */


#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ngx_http_opamp_wsframe.h"


#define NGX_HTTP_OPAMP_WS_MAX_CONTROL  125


int
ngx_http_opamp_wsframe_parse(ngx_http_opamp_wsframe_t *f,
    const unsigned char *buf, size_t len)
{
    size_t    hlen, i;
    uint64_t  plen;
    unsigned  opcode, fin;

    /*
     * Every rule is checked as soon as the bytes it needs are there, so
     * that a broken client is stopped at its first byte, not after it has
     * sent a whole header.
     */

    if (len < 1) {
        return 0;
    }

    /* no extension was negotiated: the three RSV bits must be zero */

    if (buf[0] & 0x70) {
        return -NGX_HTTP_OPAMP_WS_CLOSE_PROTOCOL_ERROR;
    }

    fin = buf[0] >> 7;
    opcode = buf[0] & 0x0f;

    switch (opcode) {

    case NGX_HTTP_OPAMP_WS_OP_CONT:
    case NGX_HTTP_OPAMP_WS_OP_TEXT:
    case NGX_HTTP_OPAMP_WS_OP_BINARY:
        break;

    case NGX_HTTP_OPAMP_WS_OP_CLOSE:
    case NGX_HTTP_OPAMP_WS_OP_PING:
    case NGX_HTTP_OPAMP_WS_OP_PONG:

        /* control frames are never fragmented */

        if (!fin) {
            return -NGX_HTTP_OPAMP_WS_CLOSE_PROTOCOL_ERROR;
        }

        break;

    default:
        return -NGX_HTTP_OPAMP_WS_CLOSE_PROTOCOL_ERROR;
    }

    if (len < 2) {
        return 0;
    }

    /* a client must mask every frame it sends (RFC 6455, 5.1) */

    if (!(buf[1] & 0x80)) {
        return -NGX_HTTP_OPAMP_WS_CLOSE_PROTOCOL_ERROR;
    }

    plen = buf[1] & 0x7f;

    if ((opcode & 0x08) && plen > NGX_HTTP_OPAMP_WS_MAX_CONTROL) {
        return -NGX_HTTP_OPAMP_WS_CLOSE_PROTOCOL_ERROR;
    }

    hlen = 2;

    if (plen == 126) {
        if (len < 4) {
            return 0;
        }

        plen = ((uint64_t) buf[2] << 8) | buf[3];

        /* the minimal number of bytes must be used to encode the length */

        if (plen < 126) {
            return -NGX_HTTP_OPAMP_WS_CLOSE_PROTOCOL_ERROR;
        }

        hlen = 4;

    } else if (plen == 127) {
        if (len < 10) {
            return 0;
        }

        /* the most significant bit of a 64-bit length must be 0 */

        if (buf[2] & 0x80) {
            return -NGX_HTTP_OPAMP_WS_CLOSE_PROTOCOL_ERROR;
        }

        plen = 0;

        for (i = 2; i < 10; i++) {
            plen = (plen << 8) | buf[i];
        }

        if (plen <= 0xffff) {
            return -NGX_HTTP_OPAMP_WS_CLOSE_PROTOCOL_ERROR;
        }

        hlen = 10;
    }

    if (len < hlen + 4) {
        return 0;
    }

    memcpy(f->mask, buf + hlen, 4);

    f->payload_len = plen;
    f->opcode = opcode;
    f->fin = fin;
    f->masked = 1;
    f->header_len = hlen + 4;

    return (int) f->header_len;
}


void
ngx_http_opamp_wsframe_unmask(unsigned char *buf, size_t len,
    const unsigned char *mask, uint64_t offset)
{
    size_t         i;
    uint64_t       word, key;
    unsigned char  k[8];

    i = 0;

    /* byte by byte until the mask starts over at the first key byte */

    while (i < len && ((offset + i) & 3) != 0) {
        buf[i] ^= mask[(offset + i) & 3];
        i++;
    }

    /* then eight bytes at a time: memcpy() keeps unaligned access legal */

    memcpy(k, mask, 4);
    memcpy(k + 4, mask, 4);
    memcpy(&key, k, 8);

    for ( /* void */ ; i + 8 <= len; i += 8) {
        memcpy(&word, buf + i, 8);
        word ^= key;
        memcpy(buf + i, &word, 8);
    }

    for ( /* void */ ; i < len; i++) {
        buf[i] ^= mask[(offset + i) & 3];
    }
}


size_t
ngx_http_opamp_wsframe_header(unsigned char *dst, unsigned opcode, int fin,
    uint64_t payload_len)
{
    size_t  i;

    dst[0] = (unsigned char) ((fin ? 0x80 : 0) | (opcode & 0x0f));

    if (payload_len < 126) {
        dst[1] = (unsigned char) payload_len;
        return 2;
    }

    if (payload_len <= 0xffff) {
        dst[1] = 126;
        dst[2] = (unsigned char) (payload_len >> 8);
        dst[3] = (unsigned char) payload_len;
        return 4;
    }

    dst[1] = 127;

    for (i = 0; i < 8; i++) {
        dst[2 + i] = (unsigned char) (payload_len >> (56 - 8 * i));
    }

    return 10;
}


int
ngx_http_opamp_wsframe_close_payload(const unsigned char *buf, size_t len)
{
    int  code;

    if (len == 0) {
        /* "no status code was present" (RFC 6455, 7.4.1) */
        return 1005;
    }

    if (len == 1 || len > NGX_HTTP_OPAMP_WS_MAX_CONTROL) {
        return -NGX_HTTP_OPAMP_WS_CLOSE_PROTOCOL_ERROR;
    }

    code = (buf[0] << 8) | buf[1];

    /*
     * 1004, 1005, 1006 and 1015 are reserved and must never be sent;
     * 1012-1014, registered later, say why a server goes away and are not
     * a client's to send; 0-999 are unused, 1016-2999 are kept for future
     * RFCs; 3000-4999 belong to libraries, frameworks and applications.
     */

    if (!((code >= 1000 && code <= 1003)
          || (code >= 1007 && code <= 1011)
          || (code >= 3000 && code <= 4999)))
    {
        return -NGX_HTTP_OPAMP_WS_CLOSE_PROTOCOL_ERROR;
    }

    if (!ngx_http_opamp_wsframe_utf8_valid(buf + 2, len - 2)) {
        return -NGX_HTTP_OPAMP_WS_CLOSE_INVALID_DATA;
    }

    return code;
}


int
ngx_http_opamp_wsframe_utf8_valid(const unsigned char *buf, size_t len)
{
    size_t         i, n, k;
    unsigned char  c, lo, hi;

    i = 0;

    while (i < len) {
        c = buf[i];

        if (c < 0x80) {
            i++;
            continue;
        }

        /*
         * RFC 3629, 4: the second byte range excludes overlong forms
         * (C0, C1, E0 80-9F, F0 80-8F), UTF-16 surrogates (ED A0-BF) and
         * code points above U+10FFFF (F4 90-BF, F5-FF).
         */

        lo = 0x80;
        hi = 0xbf;

        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;

        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;

            if (c == 0xe0) {
                lo = 0xa0;

            } else if (c == 0xed) {
                hi = 0x9f;
            }

        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;

            if (c == 0xf0) {
                lo = 0x90;

            } else if (c == 0xf4) {
                hi = 0x8f;
            }

        } else {
            return 0;
        }

        if (len - i <= n) {
            return 0;
        }

        if (buf[i + 1] < lo || buf[i + 1] > hi) {
            return 0;
        }

        for (k = 2; k <= n; k++) {
            if ((buf[i + k] & 0xc0) != 0x80) {
                return 0;
            }
        }

        i += n + 1;
    }

    return 1;
}


int
ngx_http_opamp_varint_decode(const unsigned char *buf, size_t len,
    uint64_t *value)
{
    size_t    i;
    uint64_t  v;

    v = 0;

    for (i = 0; i < len && i < 10; i++) {

        /* the tenth byte carries only bit 63 and must end the varint */

        if (i == 9 && buf[i] > 0x01) {
            return -1;
        }

        v |= (uint64_t) (buf[i] & 0x7f) << (7 * i);

        if (!(buf[i] & 0x80)) {
            *value = v;
            return (int) (i + 1);
        }
    }

    /* truncated, or still going after ten bytes */

    return -1;
}


size_t
ngx_http_opamp_varint_encode(unsigned char *dst, uint64_t value)
{
    size_t  n;

    n = 0;

    while (value >= 0x80) {
        dst[n++] = (unsigned char) (value | 0x80);
        value >>= 7;
    }

    dst[n++] = (unsigned char) value;

    return n;
}
