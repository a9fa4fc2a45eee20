/*
 * Unit tests of the instance UID helpers (src/ngx_http_opamp_uid.c).
 */

#include <string.h>

#include "unit.h"
#include "ngx_http_opamp_uid.h"


int
unit_uid(void)
{
    unsigned char  uid[16], back[16], text[37];
    unsigned char  rnd[10] = { 0xff, 0xff, 0xff, 0xff, 0xff,
                               0xff, 0xff, 0xff, 0xff, 0xff };
    unsigned char  zero[10] = { 0 };

    UNIT_BEGIN("uid");

    /* 2024-01-01T00:00:00Z = 1704067200000 ms = 0x018cc251f400 */
    ngx_http_opamp_uid_v7(uid, 1704067200000ULL, rnd);
    CHECK(uid[0] == 0x01 && uid[1] == 0x8c && uid[2] == 0xc2
          && uid[3] == 0x51 && uid[4] == 0xf4 && uid[5] == 0x00,
          "v7 timestamp is big-endian unix ms");
    CHECK((uid[6] >> 4) == 7, "v7 version nibble with random 0xff");
    CHECK((uid[8] & 0xc0) == 0x80, "v7 variant bits with random 0xff");

    ngx_http_opamp_uid_v7(uid, 0, zero);
    CHECK((uid[6] >> 4) == 7 && (uid[8] & 0xc0) == 0x80,
          "v7 version and variant with random 0x00");

    ngx_http_opamp_uid_v7(uid, 1704067200000ULL, rnd);
    ngx_http_opamp_uid_format(text, uid);
    text[36] = '\0';
    CHECK(strcmp((char *) text, "018cc251-f400-7fff-bfff-ffffffffffff") == 0,
          "canonical format");

    CHECK(ngx_http_opamp_uid_parse(back, text, 36) == 0
          && memcmp(back, uid, 16) == 0, "parse canonical round trip");

    CHECK(ngx_http_opamp_uid_parse(back,
              (unsigned char *) "018CC251-F400-7FFF-BFFF-FFFFFFFFFFFF", 36)
          == 0 && memcmp(back, uid, 16) == 0, "parse upper case");

    CHECK(ngx_http_opamp_uid_parse(back,
              (unsigned char *) "018cc251f4007fffbfffffffffffffff", 32) == 0
          && memcmp(back, uid, 16) == 0, "parse 32 hex digits");

    CHECK(ngx_http_opamp_uid_parse(back,
              (unsigned char *) "018cc251-f400-7fff-bfff-fffffffffff", 35)
          == -1, "parse rejects short");
    CHECK(ngx_http_opamp_uid_parse(back,
              (unsigned char *) "018cc251-f400-7fff-bfff-fffffffffffg", 36)
          == -1, "parse rejects non-hex");
    CHECK(ngx_http_opamp_uid_parse(back,
              (unsigned char *) "018cc251+f400-7fff-bfff-ffffffffffff", 36)
          == -1, "parse rejects misplaced dash");
    CHECK(ngx_http_opamp_uid_parse(back,
              (unsigned char *) "018cc251-f4007-fff-bfff-ffffffffffff", 36)
          == -1, "parse rejects dash in wrong place");

    CHECK(ngx_http_opamp_hex_decode(back, (unsigned char *) "00fFa1", 6)
          == 0 && back[0] == 0x00 && back[1] == 0xff && back[2] == 0xa1,
          "hex decode, either case");
    CHECK(ngx_http_opamp_hex_decode(back, (unsigned char *) "abc", 3) == -1,
          "hex decode rejects an odd length");
    CHECK(ngx_http_opamp_hex_decode(back, (unsigned char *) "0g", 2) == -1,
          "hex decode rejects non-hex");

    UNIT_END();
}
