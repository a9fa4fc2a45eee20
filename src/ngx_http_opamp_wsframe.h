/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * WebSocket frame and OpAMP header codec: frame header parsing with the
 * RFC 6455 rules a server must enforce, unmasking, frame header writing,
 * close payloads and the varint OpAMP header.  Pure code, no nginx types,
 * so that t/unit tests it alone.
 */

#ifndef _NGX_HTTP_OPAMP_WSFRAME_H_INCLUDED_
#define _NGX_HTTP_OPAMP_WSFRAME_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>


#define NGX_HTTP_OPAMP_WS_OP_CONT       0x0
#define NGX_HTTP_OPAMP_WS_OP_TEXT       0x1
#define NGX_HTTP_OPAMP_WS_OP_BINARY     0x2
#define NGX_HTTP_OPAMP_WS_OP_CLOSE      0x8
#define NGX_HTTP_OPAMP_WS_OP_PING       0x9
#define NGX_HTTP_OPAMP_WS_OP_PONG       0xa

#define NGX_HTTP_OPAMP_WS_CLOSE_NORMAL          1000
#define NGX_HTTP_OPAMP_WS_CLOSE_GOING_AWAY      1001
#define NGX_HTTP_OPAMP_WS_CLOSE_PROTOCOL_ERROR  1002
#define NGX_HTTP_OPAMP_WS_CLOSE_UNSUPPORTED     1003
#define NGX_HTTP_OPAMP_WS_CLOSE_INVALID_DATA    1007
#define NGX_HTTP_OPAMP_WS_CLOSE_POLICY          1008
#define NGX_HTTP_OPAMP_WS_CLOSE_TOO_BIG         1009
#define NGX_HTTP_OPAMP_WS_CLOSE_INTERNAL        1011

/* the longest frame header: 2 + 8 (length) + 4 (mask) */
#define NGX_HTTP_OPAMP_WS_MAX_HEADER    14


typedef struct {
    uint64_t        payload_len;
    unsigned char   mask[4];
    unsigned        opcode:4;
    unsigned        fin:1;
    unsigned        masked:1;
    size_t          header_len;
} ngx_http_opamp_wsframe_t;


/*
 * Parses a frame header from the client at buf.
 * Returns the header length (> 0) when complete, 0 when more bytes are
 * needed, or -CODE (a close code: 1002 protocol error) when the header
 * breaks a rule: reserved bits, unknown opcode, unmasked frame, control
 * frame fragmented or longer than 125, non-minimal length encoding, or a
 * 64-bit length with the high bit set.
 */
int ngx_http_opamp_wsframe_parse(ngx_http_opamp_wsframe_t *f,
    const unsigned char *buf, size_t len);

/* XORs len bytes with the mask, offset is the payload position of buf[0] */
void ngx_http_opamp_wsframe_unmask(unsigned char *buf, size_t len,
    const unsigned char *mask, uint64_t offset);

/* writes an unmasked server frame header, returns its length (2..10) */
size_t ngx_http_opamp_wsframe_header(unsigned char *dst, unsigned opcode,
    int fin, uint64_t payload_len);

/*
 * Validates a close frame payload from the client: empty, or a 2-byte code
 * that may be sent on the wire followed by UTF-8 text.  Returns the code
 * (1005 when empty) or -1002 / -1007 when the payload is invalid.
 */
int ngx_http_opamp_wsframe_close_payload(const unsigned char *buf,
    size_t len);

/* whether len bytes are valid UTF-8 */
int ngx_http_opamp_wsframe_utf8_valid(const unsigned char *buf, size_t len);

/*
 * Decodes the OpAMP WebSocket message header (a base 128 varint, 1-10
 * bytes).  Returns the number of bytes used and stores the value, or -1
 * when the varint is truncated or longer than 10 bytes / 64 bits.
 */
int ngx_http_opamp_varint_decode(const unsigned char *buf, size_t len,
    uint64_t *value);

/* encodes a varint, returns its length (1..10) */
size_t ngx_http_opamp_varint_encode(unsigned char *dst, uint64_t value);


#endif /* _NGX_HTTP_OPAMP_WSFRAME_H_INCLUDED_ */
