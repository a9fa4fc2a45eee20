/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The whole AgentToServer path of ngx_http_opamp_session_message(): the
 * wire scan, protobuf-c's decode of the view with the module's budget
 * allocator, then what becomes of the stored status fields (the admin
 * API decodes each with ngx_http_opamp_proto_unpack() and shows it as
 * JSON).  The input is the AgentToServer's bytes, as after the OpAMP
 * header of a WebSocket message or as a plain HTTP body.
 *
 * Invariants checked:
 *   - a refused scan leaves nothing to free (no field, no view);
 *   - every message field the scan stored re-checks with
 *     ngx_http_opamp_proto_check() for its own descriptor, and the view
 *     scans again to itself, without effective_config and
 *     available_components, and with nothing left to merge (no
 *     singular message field twice at any level);
 *   - protobuf-c decodes every view the scan accepts, unless the memory
 *     budget ran out, and within the budget; a field is decoded exactly
 *     when the scan found it; the budget is back to 0 after the free;
 *   - every stored status field decodes again with
 *     ngx_http_opamp_proto_unpack() and its JSON parses with jansson
 *     (valid JSON, valid UTF-8; integers read as reals, as jansson's
 *     integers stop at 2^63 and uint64 fields are written as numbers);
 *   - nothing leaks (libFuzzer's leak check after each input).
 */


#include "ngx_http_opamp_proto.h"
#include "ngx_http_opamp_json.h"
#include "shim.h"


/* the AgentToServer fields stored as received, as in session.c */
static const ngx_uint_t  fuzz_status_fields[] = { 3, 5, 6, 7, 8, 12, 14, 15 };

#define FUZZ_A2S  opamp__proto__v1__agent_to_server__descriptor


static void
fuzz_stored_field(const ProtobufCMessageDescriptor *d, ngx_str_t *field)
{
    size_t             len;
    json_t            *root;
    ngx_pool_t        *pool;
    const char        *error;
    json_error_t       jerr;
    ProtobufCMessage  *m;
    ngx_http_opamp_json_t  j;

    error = NULL;

    m = ngx_http_opamp_proto_unpack(d, field->data, field->len, &error);
    if (m == NULL) {
        FUZZ_CHECK(error != NULL
                   && ngx_strstr(error, "memory") != NULL,
                   "a stored field that passed the scan does not decode");
        return;
    }

    pool = ngx_create_pool(4096, ngx_fuzz_log);
    FUZZ_CHECK(pool != NULL, "pool");

    ngx_http_opamp_json_init(&j, pool);
    ngx_http_opamp_json_message(&j, m);

    FUZZ_CHECK(!j.failed, "JSON of a stored field failed");

    len = j.len;
    root = json_loadb((const char *) j.data, len,
                      JSON_DECODE_INT_AS_REAL, &jerr);

    if (root == NULL) {
        fprintf(stderr, "%.*s\n%s\n", (int) ngx_min(len, 4096), j.data,
                jerr.text);
    }

    FUZZ_CHECK(root != NULL, "JSON of a stored field does not parse");

    json_decref(root);
    ngx_destroy_pool(pool);
    protobuf_c_message_free_unpacked(m, NULL);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                          *buf;
    ngx_uint_t                       i, n;
    const char                      *error;
    ngx_http_opamp_a2s_t            *msg;
    ngx_http_opamp_a2s_scan_t        scan, again;
    ngx_http_opamp_proto_alloc_t     alloc;
    const ProtobufCFieldDescriptor  *f;

    /* a copy of exactly the input's size, so that ASan sees its end */
    buf = malloc(size ? size : 1);
    FUZZ_CHECK(buf != NULL, "malloc");
    memcpy(buf, data, size);

    if (ngx_http_opamp_proto_scan_a2s(&scan, buf, size, ngx_fuzz_log)
        != NGX_OK)
    {
        FUZZ_CHECK(scan.error != NULL, "a refused scan says why");
        FUZZ_CHECK(scan.view.data == NULL, "a refused scan keeps its view");

        for (i = 0; i < NGX_HTTP_OPAMP_A2S_FIELDS; i++) {
            FUZZ_CHECK(scan.field[i].data == NULL,
                       "a refused scan keeps a field");
        }

        free(buf);
        return 0;
    }

    FUZZ_CHECK(scan.view.len <= size, "the view is longer than the input");
    FUZZ_CHECK(scan.elements <= NGX_HTTP_OPAMP_PROTO_MAX_ELEMENTS,
               "more elements than the limit");

    for (n = 0; n < NGX_HTTP_OPAMP_A2S_FIELDS; n++) {
        if (scan.count[n] == 0) {
            FUZZ_CHECK(scan.field[n].data == NULL && scan.field[n].len == 0,
                       "a field that never came has bytes");
            continue;
        }

        f = protobuf_c_message_descriptor_get_field(&FUZZ_A2S, n);
        FUZZ_CHECK(f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE,
                   "a stored field is not a message field");

        error = NULL;
        FUZZ_CHECK(ngx_http_opamp_proto_check(f->descriptor,
                                              scan.field[n].data,
                                              scan.field[n].len, &error)
                   == NGX_OK,
                   "a stored field does not re-check for its descriptor");
    }

    /* the view is an AgentToServer itself, without the two fields */

    FUZZ_CHECK(ngx_http_opamp_proto_scan_a2s(&again, scan.view.data,
                                             scan.view.len, ngx_fuzz_log)
               == NGX_OK,
               "the view does not scan");
    FUZZ_CHECK(again.count[6] == 0 && again.count[14] == 0,
               "the view holds effective_config or available_components");
    FUZZ_CHECK(again.merged.data == NULL,
               "the view still has a singular message field twice");
    FUZZ_CHECK(again.view.len == scan.view.len
               && ngx_memcmp(again.view.data, scan.view.data,
                             scan.view.len) == 0,
               "the view of the view differs");
    ngx_http_opamp_proto_scan_free(&again);

    msg = ngx_http_opamp_proto_decode_a2s(&alloc, scan.view.data,
                                          scan.view.len, ngx_fuzz_log);

    FUZZ_CHECK(alloc.used <= alloc.limit, "over the decode budget");

    if (msg == NULL) {
        FUZZ_CHECK(alloc.exhausted,
                   "protobuf-c refused a view that the scan accepted");

    } else {
        for (n = 1; n < NGX_HTTP_OPAMP_A2S_FIELDS; n++) {
            f = protobuf_c_message_descriptor_get_field(&FUZZ_A2S, n);

            if (f == NULL || f->type != PROTOBUF_C_TYPE_MESSAGE) {
                continue;
            }

            if (n == 6 || n == 14) {
                FUZZ_CHECK(*(void **) ((char *) msg + f->offset) == NULL,
                           "a field kept out of the view was decoded");
                continue;
            }

            FUZZ_CHECK((*(void **) ((char *) msg + f->offset) != NULL)
                       == (scan.count[n] != 0),
                       "decoded fields differ from the scan's");
        }

        ngx_http_opamp_proto_free_a2s(&alloc, msg);
        FUZZ_CHECK(alloc.used == 0, "the budget is not back to 0");
    }

    for (i = 0; i < sizeof(fuzz_status_fields) / sizeof(ngx_uint_t); i++) {
        n = fuzz_status_fields[i];

        if (scan.count[n]) {
            f = protobuf_c_message_descriptor_get_field(&FUZZ_A2S, n);
            fuzz_stored_field(f->descriptor, &scan.field[n]);
        }
    }

    ngx_http_opamp_proto_scan_free(&scan);
    free(buf);

    return 0;
}
