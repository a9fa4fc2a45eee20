/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The admin API's JSON readers: a body parsed by jansson as the admin API
 * does (json_loadb with JSON_REJECT_DUPLICATES), then
 * ngx_http_opamp_json_to_message() for the messages an operator may PUT
 * as JSON (PackagesAvailable, ConnectionSettingsOffers) and, for more of
 * the reader's code, every other message the admin API shows.  The first
 * input byte picks the descriptor, the rest is the JSON text.
 *
 * Invariants checked, for every message a body gives:
 *   - the packed message (what the admin API stores in Redis) decodes
 *     with ngx_http_opamp_proto_unpack(), as the session and the admin
 *     API decode it later;
 *   - its JSON (what GET shows) parses with jansson and is accepted as
 *     a body again (not always as the same bytes: bytes that are not
 *     text are shown in base64 and read back as text, as documented);
 *   - nothing leaks.
 */


#include "ngx_http_opamp_proto.h"
#include "ngx_http_opamp_json.h"
#include "shim.h"


static const ProtobufCMessageDescriptor  *fuzz_descriptors[] = {
    &opamp__proto__v1__packages_available__descriptor,
    &opamp__proto__v1__connection_settings_offers__descriptor,
    &opamp__proto__v1__agent_description__descriptor,
    &opamp__proto__v1__component_health__descriptor,
    &opamp__proto__v1__effective_config__descriptor,
    &opamp__proto__v1__remote_config_status__descriptor,
    &opamp__proto__v1__package_statuses__descriptor,
    &opamp__proto__v1__custom_capabilities__descriptor,
    &opamp__proto__v1__available_components__descriptor,
    &opamp__proto__v1__connection_settings_status__descriptor
};

#define FUZZ_NDESC  (sizeof(fuzz_descriptors) / sizeof(fuzz_descriptors[0]))


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t                            *root, *shown;
    ngx_str_t                          packed;
    ngx_pool_t                        *pool;
    const char                        *err;
    json_error_t                       jerr;
    ProtobufCMessage                  *m, *m2, *m3;
    ngx_http_opamp_json_t              j;
    const ProtobufCMessageDescriptor  *d;

    if (size == 0) {
        return 0;
    }

    d = fuzz_descriptors[data[0] % FUZZ_NDESC];

    root = json_loadb((const char *) data + 1, size - 1,
                      JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        return 0;
    }

    err = NULL;
    m = ngx_http_opamp_json_to_message(root, d, &err);
    json_decref(root);

    if (m == NULL) {
        FUZZ_CHECK(err != NULL, "a refused body says why");
        return 0;
    }

    FUZZ_CHECK(ngx_http_opamp_proto_pack(m, &packed, ngx_fuzz_log) == NGX_OK,
               "pack");

    err = NULL;
    m2 = ngx_http_opamp_proto_unpack(d, packed.data, packed.len, &err);

    if (m2 == NULL) {
        fprintf(stderr, "stored %s does not decode: %s\n", d->name,
                err ? err : "?");
    }

    FUZZ_CHECK(m2 != NULL, "what the admin API stores does not decode");

    pool = ngx_create_pool(4096, ngx_fuzz_log);
    FUZZ_CHECK(pool != NULL, "pool");

    ngx_http_opamp_json_init(&j, pool);
    ngx_http_opamp_json_message(&j, m2);
    FUZZ_CHECK(!j.failed, "JSON output failed");

    shown = json_loadb((const char *) j.data, j.len,
                       JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL,
                       &jerr);

    if (shown == NULL) {
        fprintf(stderr, "%.*s\n%s\n", (int) ngx_min(j.len, 4096), j.data,
                jerr.text);
    }

    FUZZ_CHECK(shown != NULL, "the JSON of a stored message does not parse");
    json_decref(shown);

    /* what GET shows can be PUT back as it is, unless it holds a uint64
     * over 2^63 - 1, which jansson cannot read as an integer */

    shown = json_loadb((const char *) j.data, j.len, JSON_REJECT_DUPLICATES,
                       &jerr);

    if (shown == NULL) {
        FUZZ_CHECK(ngx_strstr(jerr.text, "too big integer") != NULL,
                   "the JSON of a stored message does not parse");

    } else {
        err = NULL;
        m3 = ngx_http_opamp_json_to_message(shown, d, &err);
        json_decref(shown);

        if (m3 == NULL) {
            fprintf(stderr, "%.*s\nrefused: %s\n",
                    (int) ngx_min(j.len, 4096), j.data, err ? err : "?");
        }

        FUZZ_CHECK(m3 != NULL, "what GET shows is refused as a body");
        protobuf_c_message_free_unpacked(m3, NULL);
    }

    ngx_destroy_pool(pool);
    ngx_free(packed.data);
    protobuf_c_message_free_unpacked(m2, NULL);
    protobuf_c_message_free_unpacked(m, NULL);

    return 0;
}
