/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Unit tests of the WebSocket frame and OpAMP header codec
 * (src/ngx_http_opamp_wsframe.c).
 */

#include <stdint.h>
#include <string.h>

#include "unit.h"
#include "ngx_http_opamp_wsframe.h"


static const unsigned char  mask_key[4] = { 0x37, 0xfa, 0x21, 0x3d };


/* builds a client frame header: b0 (FIN, RSV, opcode), then the length
 * in the encoding given by `enc` (0: 7 bits, 126: 16 bits, 127: 64 bits),
 * then the mask key when `masked` */

static size_t
frame(unsigned char *dst, unsigned b0, uint64_t len, unsigned enc,
    int masked)
{
    size_t  n, i;

    dst[0] = (unsigned char) b0;
    n = 2;

    if (enc == 126) {
        dst[1] = 126;
        dst[2] = (unsigned char) (len >> 8);
        dst[3] = (unsigned char) len;
        n = 4;

    } else if (enc == 127) {
        dst[1] = 127;

        for (i = 0; i < 8; i++) {
            dst[2 + i] = (unsigned char) (len >> (56 - 8 * i));
        }

        n = 10;

    } else {
        dst[1] = (unsigned char) len;
    }

    if (masked) {
        dst[1] |= 0x80;
        memcpy(dst + n, mask_key, 4);
        n += 4;
    }

    return n;
}


static int
parse(const unsigned char *buf, size_t len)
{
    ngx_http_opamp_wsframe_t  f;

    return ngx_http_opamp_wsframe_parse(&f, buf, len);
}


/* every proper prefix of a valid header needs more bytes, the whole
 * header (and anything after it) parses to its length */

static int
split_ok(const unsigned char *buf, size_t hlen)
{
    size_t                    i;
    unsigned char             more[32];
    ngx_http_opamp_wsframe_t  f;

    for (i = 0; i < hlen; i++) {
        if (ngx_http_opamp_wsframe_parse(&f, buf, i) != 0) {
            return 0;
        }
    }

    if (ngx_http_opamp_wsframe_parse(&f, buf, hlen) != (int) hlen) {
        return 0;
    }

    memcpy(more, buf, hlen);
    memset(more + hlen, 0xee, sizeof(more) - hlen);

    return ngx_http_opamp_wsframe_parse(&f, more, sizeof(more))
           == (int) hlen;
}


static int
utf8(const char *s, size_t len)
{
    return ngx_http_opamp_wsframe_utf8_valid((const unsigned char *) s, len);
}


static int
close_code(unsigned code, const char *reason, size_t rlen)
{
    unsigned char  buf[256];

    buf[0] = (unsigned char) (code >> 8);
    buf[1] = (unsigned char) code;
    memcpy(buf + 2, reason, rlen);

    return ngx_http_opamp_wsframe_close_payload(buf, 2 + rlen);
}


static int
varint(const unsigned char *buf, size_t len, uint64_t expect, int used)
{
    uint64_t  v;

    v = 0xdeadbeef;

    if (ngx_http_opamp_varint_decode(buf, len, &v) != used) {
        return 0;
    }

    return used < 0 || v == expect;
}


static void
test_parse(int *failures)
{
    size_t                    n, i;
    unsigned                  op;
    unsigned char             b[32];
    ngx_http_opamp_wsframe_t  f;

    UNIT_BEGIN("wsframe parse");

    n = frame(b, 0x82, 5, 0, 1);
    memset(&f, 0, sizeof(f));
    CHECK(ngx_http_opamp_wsframe_parse(&f, b, n) == 6
          && f.header_len == 6 && f.payload_len == 5 && f.fin == 1
          && f.opcode == NGX_HTTP_OPAMP_WS_OP_BINARY && f.masked == 1
          && memcmp(f.mask, mask_key, 4) == 0,
          "binary FIN frame of 5 bytes");

    n = frame(b, 0x02, 0, 0, 1);
    CHECK(ngx_http_opamp_wsframe_parse(&f, b, n) == 6 && f.fin == 0
          && f.payload_len == 0, "binary frame without FIN, empty");

    n = frame(b, 0x80, 3, 0, 1);
    CHECK(ngx_http_opamp_wsframe_parse(&f, b, n) == 6 && f.fin == 1
          && f.opcode == NGX_HTTP_OPAMP_WS_OP_CONT, "continuation frame");

    /* lengths at the encoding boundaries */

    n = frame(b, 0x82, 125, 0, 1);
    CHECK(ngx_http_opamp_wsframe_parse(&f, b, n) == 6
          && f.payload_len == 125, "length 125 in 7 bits");

    n = frame(b, 0x82, 126, 126, 1);
    CHECK(ngx_http_opamp_wsframe_parse(&f, b, n) == 8
          && f.payload_len == 126, "length 126 in 16 bits");

    n = frame(b, 0x82, 65535, 126, 1);
    CHECK(ngx_http_opamp_wsframe_parse(&f, b, n) == 8
          && f.payload_len == 65535, "length 65535 in 16 bits");

    n = frame(b, 0x82, 65536, 127, 1);
    CHECK(ngx_http_opamp_wsframe_parse(&f, b, n) == 14
          && f.payload_len == 65536, "length 65536 in 64 bits");

    n = frame(b, 0x82, 0x7fffffffffffffffULL, 127, 1);
    CHECK(ngx_http_opamp_wsframe_parse(&f, b, n) == 14
          && f.payload_len == 0x7fffffffffffffffULL,
          "length 2^63-1 in 64 bits");

    /* non-minimal length encodings */

    n = frame(b, 0x82, 125, 126, 1);
    CHECK(parse(b, n) == -1002, "length 125 in 16 bits rejected");

    n = frame(b, 0x82, 0, 126, 1);
    CHECK(parse(b, n) == -1002, "length 0 in 16 bits rejected");

    n = frame(b, 0x82, 65535, 127, 1);
    CHECK(parse(b, n) == -1002, "length 65535 in 64 bits rejected");

    n = frame(b, 0x82, 5, 127, 1);
    CHECK(parse(b, n) == -1002, "length 5 in 64 bits rejected");

    n = frame(b, 0x82, 0x8000000000000000ULL, 127, 1);
    CHECK(parse(b, n) == -1002, "64-bit length with high bit rejected");

    n = frame(b, 0x82, 0xffffffffffffffffULL, 127, 1);
    CHECK(parse(b, n) == -1002, "64-bit length all ones rejected");

    /* reserved bits, each alone, known at the first byte */

    for (i = 0; i < 3; i++) {
        n = frame(b, 0x82 | (0x40 >> i), 5, 0, 1);
        CHECK(parse(b, n) == -1002, "RSV bit rejected");
        CHECK(parse(b, 1) == -1002, "RSV bit rejected at first byte");
    }

    /* opcodes */

    for (op = 0; op < 16; op++) {
        n = frame(b, 0x80 | op, 0, 0, 1);

        if (op == 0 || op == 1 || op == 2 || op == 8 || op == 9 || op == 10)
        {
            CHECK(ngx_http_opamp_wsframe_parse(&f, b, n) == 6
                  && f.opcode == op, "known opcode accepted");

        } else {
            CHECK(parse(b, n) == -1002, "unknown opcode rejected");
            CHECK(parse(b, 1) == -1002,
                  "unknown opcode rejected at first byte");
        }
    }

    /* masking */

    n = frame(b, 0x82, 5, 0, 0);
    CHECK(parse(b, n) == -1002, "unmasked data frame rejected");
    CHECK(parse(b, 2) == -1002, "unmasked frame rejected at second byte");

    n = frame(b, 0x89, 0, 0, 0);
    CHECK(parse(b, n) == -1002, "unmasked ping rejected");

    /* control frames: FIN and at most 125 bytes */

    for (op = 8; op <= 10; op++) {
        n = frame(b, op, 0, 0, 1);
        CHECK(parse(b, n) == -1002, "fragmented control frame rejected");
        CHECK(parse(b, 1) == -1002,
              "fragmented control frame rejected at first byte");

        n = frame(b, 0x80 | op, 125, 0, 1);
        CHECK(parse(b, n) == 6, "control frame of 125 bytes accepted");

        n = frame(b, 0x80 | op, 126, 126, 1);
        CHECK(parse(b, n) == -1002, "control frame of 126 bytes rejected");
        CHECK(parse(b, 2) == -1002,
              "control frame of 126 bytes rejected at second byte");

        n = frame(b, 0x80 | op, 65536, 127, 1);
        CHECK(parse(b, n) == -1002, "control frame with 64-bit length");
    }

    /* headers arriving a byte at a time */

    n = frame(b, 0x82, 5, 0, 1);
    CHECK(split_ok(b, n), "6-byte header split byte by byte");

    n = frame(b, 0x89, 125, 0, 1);
    CHECK(split_ok(b, n), "ping header split byte by byte");

    n = frame(b, 0x82, 126, 126, 1);
    CHECK(split_ok(b, n), "8-byte header split byte by byte");

    n = frame(b, 0x02, 65535, 126, 1);
    CHECK(split_ok(b, n), "8-byte header (65535) split byte by byte");

    n = frame(b, 0x82, 65536, 127, 1);
    CHECK(split_ok(b, n), "14-byte header split byte by byte");

    n = frame(b, 0x80, 0x100000000ULL, 127, 1);
    CHECK(split_ok(b, n), "14-byte header (4 GB) split byte by byte");

    CHECK(parse(b, 0) == 0, "no bytes needs more");

    UNIT_END_INTO(failures);
}


static void
test_unmask(int *failures)
{
    size_t         i, cut, len;
    unsigned char  plain[37], ref[37], buf[37], cpy[37];

    UNIT_BEGIN("wsframe unmask");

    len = sizeof(plain);

    for (i = 0; i < len; i++) {
        plain[i] = (unsigned char) (i * 7 + 3);
        ref[i] = plain[i] ^ mask_key[i & 3];
    }

    memcpy(buf, plain, len);
    ngx_http_opamp_wsframe_unmask(buf, len, mask_key, 0);
    CHECK(memcmp(buf, ref, len) == 0, "whole payload from offset 0");

    ngx_http_opamp_wsframe_unmask(buf, len, mask_key, 0);
    CHECK(memcmp(buf, plain, len) == 0, "unmask twice is identity");

    /* the payload arriving in two pieces at every possible cut */

    for (cut = 0; cut <= len; cut++) {
        memcpy(buf, plain, len);
        ngx_http_opamp_wsframe_unmask(buf, cut, mask_key, 0);
        ngx_http_opamp_wsframe_unmask(buf + cut, len - cut, mask_key, cut);
        CHECK(memcmp(buf, ref, len) == 0, "two pieces with offset");
    }

    /* three pieces, the last starting at an offset beyond 2^32 */

    memcpy(buf, plain, len);
    ngx_http_opamp_wsframe_unmask(buf, 3, mask_key, 0x100000000ULL);
    ngx_http_opamp_wsframe_unmask(buf + 3, 10, mask_key,
                                  0x100000000ULL + 3);
    ngx_http_opamp_wsframe_unmask(buf + 13, len - 13, mask_key,
                                  0x100000000ULL + 13);
    CHECK(memcmp(buf, ref, len) == 0, "three pieces, 64-bit offsets");

    /* unaligned start in memory */

    memcpy(cpy, plain, len);
    ngx_http_opamp_wsframe_unmask(cpy + 1, len - 1, mask_key, 1);
    CHECK(memcmp(cpy + 1, ref + 1, len - 1) == 0 && cpy[0] == plain[0],
          "unaligned buffer, offset 1");

    memcpy(buf, plain, len);
    ngx_http_opamp_wsframe_unmask(buf, 0, mask_key, 2);
    CHECK(memcmp(buf, plain, len) == 0, "empty unmask changes nothing");

    UNIT_END_INTO(failures);
}


static void
test_header(int *failures)
{
    size_t                    n, m;
    unsigned char             b[16], c[32];
    ngx_http_opamp_wsframe_t  f;
    static const uint64_t     lens[] = { 0, 1, 125, 126, 127, 65535, 65536,
                                         0xffffffffULL, 0x100000000ULL };
    size_t                    i;

    UNIT_BEGIN("wsframe header");

    n = ngx_http_opamp_wsframe_header(b, NGX_HTTP_OPAMP_WS_OP_BINARY, 1, 0);
    CHECK(n == 2 && b[0] == 0x82 && b[1] == 0x00, "empty binary");

    n = ngx_http_opamp_wsframe_header(b, NGX_HTTP_OPAMP_WS_OP_BINARY, 1,
                                      125);
    CHECK(n == 2 && b[1] == 125, "125 in 7 bits");

    n = ngx_http_opamp_wsframe_header(b, NGX_HTTP_OPAMP_WS_OP_BINARY, 1,
                                      126);
    CHECK(n == 4 && b[1] == 126 && b[2] == 0 && b[3] == 126,
          "126 in 16 bits");

    n = ngx_http_opamp_wsframe_header(b, NGX_HTTP_OPAMP_WS_OP_BINARY, 1,
                                      65535);
    CHECK(n == 4 && b[1] == 126 && b[2] == 0xff && b[3] == 0xff,
          "65535 in 16 bits");

    n = ngx_http_opamp_wsframe_header(b, NGX_HTTP_OPAMP_WS_OP_BINARY, 1,
                                      65536);
    CHECK(n == 10 && b[1] == 127 && b[2] == 0 && b[3] == 0 && b[4] == 0
          && b[5] == 0 && b[6] == 0 && b[7] == 1 && b[8] == 0 && b[9] == 0,
          "65536 in 64 bits");

    n = ngx_http_opamp_wsframe_header(b, NGX_HTTP_OPAMP_WS_OP_CLOSE, 1, 2);
    CHECK(n == 2 && b[0] == 0x88 && b[1] == 2, "close frame");

    n = ngx_http_opamp_wsframe_header(b, NGX_HTTP_OPAMP_WS_OP_PONG, 1, 4);
    CHECK(n == 2 && b[0] == 0x8a, "pong frame");

    n = ngx_http_opamp_wsframe_header(b, NGX_HTTP_OPAMP_WS_OP_BINARY, 0, 9);
    CHECK(n == 2 && b[0] == 0x02, "binary without FIN");

    /* what the server writes, masked as a client would, parses back */

    for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        n = ngx_http_opamp_wsframe_header(b, NGX_HTTP_OPAMP_WS_OP_BINARY, 1,
                                          lens[i]);
        memcpy(c, b, n);
        c[1] |= 0x80;
        memcpy(c + n, mask_key, 4);
        m = n + 4;

        CHECK(ngx_http_opamp_wsframe_parse(&f, c, m) == (int) m
              && f.payload_len == lens[i] && f.fin == 1
              && f.opcode == NGX_HTTP_OPAMP_WS_OP_BINARY,
              "written header parses back with the same length");
    }

    UNIT_END_INTO(failures);
}


static void
test_close(int *failures)
{
    size_t          i;
    unsigned char   b[130];
    static const unsigned  ok[] = { 1000, 1001, 1002, 1003, 1007, 1008,
                                    1009, 1010, 1011, 3000, 3999, 4000,
                                    4999 };
    static const unsigned  bad[] = { 0, 999, 1004, 1005, 1006, 1012, 1013,
                                     1014, 1015, 1016, 1100, 2000, 2999,
                                     5000, 65535 };

    UNIT_BEGIN("wsframe close payload");

    memset(b, 0, sizeof(b));

    CHECK(ngx_http_opamp_wsframe_close_payload(b, 0) == 1005,
          "empty payload means no code (1005)");

    b[0] = 0x03;
    CHECK(ngx_http_opamp_wsframe_close_payload(b, 1) == -1002,
          "one byte payload rejected");

    for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        CHECK(close_code(ok[i], "", 0) == (int) ok[i],
              "code allowed on the wire");
    }

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK(close_code(bad[i], "", 0) == -1002,
              "code not allowed on the wire");
    }

    CHECK(close_code(1000, "bye", 3) == 1000, "code with ASCII reason");
    CHECK(close_code(4000, "\xc3\xa9t\xc3\xa9", 6) == 4000,
          "code with UTF-8 reason");
    CHECK(close_code(1000, "\xc3", 1) == -1007, "truncated UTF-8 reason");
    CHECK(close_code(1001, "\xed\xa0\x80", 3) == -1007,
          "surrogate in reason");
    CHECK(close_code(1004, "\xff", 1) == -1002,
          "bad code wins over bad reason");

    b[0] = 0x03;
    b[1] = 0xe8;
    memset(b + 2, 'a', 123);
    CHECK(ngx_http_opamp_wsframe_close_payload(b, 125) == 1000,
          "125-byte close payload");

    memset(b + 2, 'a', 124);
    CHECK(ngx_http_opamp_wsframe_close_payload(b, 126) == -1002,
          "126-byte close payload rejected");

    UNIT_END_INTO(failures);
}


static void
test_utf8(int *failures)
{
    UNIT_BEGIN("wsframe utf8");

    CHECK(utf8("", 0), "empty");
    CHECK(utf8("hello", 5), "ASCII");
    CHECK(utf8("\x00\x7f", 2), "NUL and DEL");
    CHECK(utf8("h\xc3\xa9llo", 6), "2-byte sequence");
    CHECK(utf8("\xc2\x80", 2), "U+0080");
    CHECK(utf8("\xdf\xbf", 2), "U+07FF");
    CHECK(utf8("\xe0\xa0\x80", 3), "U+0800");
    CHECK(utf8("\xe2\x82\xac", 3), "euro sign");
    CHECK(utf8("\xed\x9f\xbf", 3), "U+D7FF");
    CHECK(utf8("\xee\x80\x80", 3), "U+E000");
    CHECK(utf8("\xef\xbf\xbf", 3), "U+FFFF");
    CHECK(utf8("\xf0\x90\x80\x80", 4), "U+10000");
    CHECK(utf8("\xf0\x9f\x98\x80", 4), "emoji");
    CHECK(utf8("\xf4\x8f\xbf\xbf", 4), "U+10FFFF");

    /* overlong forms */
    CHECK(!utf8("\xc0\x80", 2), "overlong NUL C0 80");
    CHECK(!utf8("\xc1\xbf", 2), "overlong C1 BF");
    CHECK(!utf8("\xe0\x80\x80", 3), "overlong E0 80 80");
    CHECK(!utf8("\xe0\x9f\xbf", 3), "overlong E0 9F BF");
    CHECK(!utf8("\xf0\x80\x80\x80", 4), "overlong F0 80 80 80");
    CHECK(!utf8("\xf0\x8f\xbf\xbf", 4), "overlong F0 8F BF BF");

    /* UTF-16 surrogates */
    CHECK(!utf8("\xed\xa0\x80", 3), "surrogate U+D800");
    CHECK(!utf8("\xed\xbf\xbf", 3), "surrogate U+DFFF");
    CHECK(!utf8("\xed\xa0\xbd\xed\xb8\x80", 6), "surrogate pair");

    /* beyond U+10FFFF and bytes never used */
    CHECK(!utf8("\xf4\x90\x80\x80", 4), "U+110000");
    CHECK(!utf8("\xf5\x80\x80\x80", 4), "F5 lead byte");
    CHECK(!utf8("\xf8\x88\x80\x80\x80", 5), "5-byte form");
    CHECK(!utf8("\xfe", 1), "FE");
    CHECK(!utf8("\xff", 1), "FF");

    /* broken sequences */
    CHECK(!utf8("\x80", 1), "lone continuation byte");
    CHECK(!utf8("a\xbf", 2), "continuation after ASCII");
    CHECK(!utf8("\xc3", 1), "truncated 2-byte");
    CHECK(!utf8("\xe2\x82", 2), "truncated 3-byte");
    CHECK(!utf8("\xf0\x9f\x98", 3), "truncated 4-byte");
    CHECK(!utf8("\xc3\x28", 2), "bad second byte");
    CHECK(!utf8("\xe2\x28\xa1", 3), "bad second byte of 3");
    CHECK(!utf8("\xe2\x82\x28", 3), "bad third byte of 3");
    CHECK(!utf8("\xf0\x9f\x28\x80", 4), "bad third byte of 4");
    CHECK(!utf8("\xf0\x9f\x98\x28", 4), "bad fourth byte of 4");
    CHECK(!utf8("ok\xe2\x82", 4), "valid text then truncated");

    UNIT_END_INTO(failures);
}


static void
test_varint(int *failures)
{
    size_t         i, n;
    uint64_t       v;
    unsigned char  b[16];
    static const unsigned char  zero[] = { 0x00 };
    static const unsigned char  tail[] = { 0x00, 0x0a, 0x0b };
    static const unsigned char  v127[] = { 0x7f };
    static const unsigned char  v128[] = { 0x80, 0x01 };
    static const unsigned char  v300[] = { 0xac, 0x02 };
    static const unsigned char  nonmin[] = { 0x80, 0x00 };
    static const unsigned char  max[] = { 0xff, 0xff, 0xff, 0xff, 0xff,
                                          0xff, 0xff, 0xff, 0xff, 0x01 };
    static const unsigned char  over[] = { 0xff, 0xff, 0xff, 0xff, 0xff,
                                           0xff, 0xff, 0xff, 0xff, 0x02 };
    static const unsigned char  eleven[] = { 0x80, 0x80, 0x80, 0x80, 0x80,
                                             0x80, 0x80, 0x80, 0x80, 0x80,
                                             0x00 };
    static const unsigned char  cont[] = { 0x80 };
    static const unsigned char  cont9[] = { 0xff, 0xff, 0xff, 0xff, 0xff,
                                            0xff, 0xff, 0xff, 0xff };
    static const uint64_t  vals[] = { 0, 1, 127, 128, 16383, 16384,
                                      0xffffffffULL, 0x100000000ULL,
                                      0x8000000000000000ULL,
                                      0xffffffffffffffffULL };
    static const size_t    lens[] = { 1, 1, 1, 2, 2, 3, 5, 5, 10, 10 };

    UNIT_BEGIN("varint");

    CHECK(varint(zero, 1, 0, 1), "0 in one byte (the OpAMP header)");
    CHECK(varint(tail, 3, 0, 1), "bytes after the varint are not used");
    CHECK(varint(v127, 1, 127, 1), "127");
    CHECK(varint(v128, 2, 128, 2), "128");
    CHECK(varint(v300, 2, 300, 2), "300");
    CHECK(varint(nonmin, 2, 0, 2), "0 in two bytes");
    CHECK(varint(max, 10, 0xffffffffffffffffULL, 10),
          "10-byte varint, 2^64-1");
    CHECK(varint(over, 10, 0, -1), "10-byte varint above 64 bits");
    CHECK(varint(eleven, 11, 0, -1), "11-byte varint rejected");
    CHECK(varint(cont, 1, 0, -1), "truncated varint");
    CHECK(varint(cont9, 9, 0, -1), "truncated 9-byte varint");
    CHECK(varint(zero, 0, 0, -1), "empty input");
    CHECK(varint(v300, 1, 0, -1), "300 cut after one byte");

    for (i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        memset(b, 0xee, sizeof(b));
        n = ngx_http_opamp_varint_encode(b, vals[i]);
        v = 1;

        CHECK(n == lens[i]
              && ngx_http_opamp_varint_decode(b, sizeof(b), &v) == (int) n
              && v == vals[i], "encode and decode round trip");
    }

    UNIT_END_INTO(failures);
}


int
unit_wsframe(void)
{
    int  failures;

    failures = 0;

    test_parse(&failures);
    test_unmask(&failures);
    test_header(&failures);
    test_close(&failures);
    test_utf8(&failures);
    test_varint(&failures);

    return failures;
}
