/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * ngx_http_opamp_proto_unpack() for every message it decodes from outside
 * the worker: the agent hash's stored status fields (shown by the admin
 * API), and the PackagesAvailable and ConnectionSettingsOffers that
 * operators upload and the session offers.  The first input byte picks
 * the descriptor, the rest is the message.
 *
 * Invariants checked, for whatever decodes:
 *   - its re-packing by protobuf-c (what the module stores and sends)
 *     decodes again through ngx_http_opamp_proto_unpack() and packs to the
 *     same bytes (a fixed point after one round);
 *   - its JSON (ngx_http_opamp_json_message(), the admin API's output)
 *     parses with jansson: valid JSON and valid UTF-8 (integers read as
 *     reals: jansson's integers stop at 2^63, uint64 fields are written
 *     as numbers);
 *   - nothing leaks.
 */


#include "ngx_http_opamp_proto.h"
#include "ngx_http_opamp_json.h"
#include "shim.h"


static const ProtobufCMessageDescriptor  *fuzz_descriptors[] = {
    &opamp__proto__v1__agent_description__descriptor,
    &opamp__proto__v1__component_health__descriptor,
    &opamp__proto__v1__effective_config__descriptor,
    &opamp__proto__v1__remote_config_status__descriptor,
    &opamp__proto__v1__package_statuses__descriptor,
    &opamp__proto__v1__custom_capabilities__descriptor,
    &opamp__proto__v1__available_components__descriptor,
    &opamp__proto__v1__connection_settings_status__descriptor,
    &opamp__proto__v1__packages_available__descriptor,
    &opamp__proto__v1__connection_settings_offers__descriptor
};

#define FUZZ_NDESC  (sizeof(fuzz_descriptors) / sizeof(fuzz_descriptors[0]))


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                            *buf;
    json_t                            *root;
    ngx_str_t                          packed, again;
    ngx_pool_t                        *pool;
    const char                        *error;
    json_error_t                       jerr;
    ProtobufCMessage                  *m, *m2;
    ngx_http_opamp_json_t              j;
    const ProtobufCMessageDescriptor  *d;

    if (size == 0) {
        return 0;
    }

    d = fuzz_descriptors[data[0] % FUZZ_NDESC];

    buf = malloc(size - 1 ? size - 1 : 1);
    FUZZ_CHECK(buf != NULL, "malloc");
    memcpy(buf, data + 1, size - 1);

    error = NULL;
    m = ngx_http_opamp_proto_unpack(d, buf, size - 1, &error);

    if (m == NULL) {
        FUZZ_CHECK(error != NULL, "a refused message says why");
        free(buf);
        return 0;
    }

    FUZZ_CHECK(m->descriptor == d, "decoded as another message");

    FUZZ_CHECK(ngx_http_opamp_proto_pack(m, &packed, ngx_fuzz_log) == NGX_OK,
               "pack");
    FUZZ_CHECK(packed.len == protobuf_c_message_get_packed_size(m),
               "packed size");

    error = NULL;
    m2 = ngx_http_opamp_proto_unpack(d, packed.data, packed.len, &error);

    if (m2 == NULL) {
        fprintf(stderr, "re-packed %s does not decode: %s\n", d->name,
                error ? error : "?");
    }

    FUZZ_CHECK(m2 != NULL, "a decoded message re-packed does not decode");

    FUZZ_CHECK(ngx_http_opamp_proto_pack(m2, &again, ngx_fuzz_log) == NGX_OK,
               "pack");
    FUZZ_CHECK(again.len == packed.len
               && ngx_memcmp(again.data, packed.data, packed.len) == 0,
               "packing is not a fixed point after one round");

    pool = ngx_create_pool(4096, ngx_fuzz_log);
    FUZZ_CHECK(pool != NULL, "pool");

    ngx_http_opamp_json_init(&j, pool);
    ngx_http_opamp_json_message(&j, m);
    FUZZ_CHECK(!j.failed, "JSON output failed");

    root = json_loadb((const char *) j.data, j.len, JSON_DECODE_INT_AS_REAL,
                      &jerr);

    if (root == NULL) {
        fprintf(stderr, "%.*s\n%s\n", (int) ngx_min(j.len, 4096), j.data,
                jerr.text);
    }

    FUZZ_CHECK(root != NULL, "the JSON of a decoded message does not parse");

    json_decref(root);
    ngx_destroy_pool(pool);

    ngx_free(again.data);
    ngx_free(packed.data);
    protobuf_c_message_free_unpacked(m2, NULL);
    protobuf_c_message_free_unpacked(m, NULL);
    free(buf);

    return 0;
}
