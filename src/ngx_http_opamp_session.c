/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The OpAMP protocol for one agent connection: an AgentToServer checked,
 * decoded and reported to Redis, the reply and the error responses, the
 * live WebSocket sessions of this worker (by connection number and by
 * instance uid) and the connection's end.  What a reply carries beyond
 * the reply itself is built in ngx_http_opamp_session_offers.c; what is
 * pushed to connected agents when Redis says a config changed, in
 * ngx_http_opamp_session_check.c.
 */


#include "ngx_http_opamp_session.h"
#include "ngx_http_opamp_session_internal.h"
#include "ngx_http_opamp_fanout.h"
#include "ngx_http_opamp_gzip.h"
#include "ngx_http_opamp_metrics.h"
#include "ngx_http_opamp_proto.h"
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_store.h"
#include "ngx_http_opamp_uid.h"


/* ServerErrorResponseType, as protobuf-c names them */
#define NGX_HTTP_OPAMP_ERR_BAD_REQUEST                                       \
    OPAMP__PROTO__V1__SERVER_ERROR_RESPONSE_TYPE__ServerErrorResponseType_BadRequest
#define NGX_HTTP_OPAMP_ERR_UNAVAILABLE                                       \
    OPAMP__PROTO__V1__SERVER_ERROR_RESPONSE_TYPE__ServerErrorResponseType_Unavailable


/* how long an agent should wait when Redis is unreachable: the spec's
 * minimum recommended retry interval */
#define NGX_HTTP_OPAMP_RETRY_AFTER_SEC  30


/* one AgentToServer on its way through Redis */
typedef struct {
    ngx_http_opamp_session_t       *session;
    ngx_http_opamp_store_req_t     *request;
    ngx_http_opamp_report_t         report;
    u_char                         *stored;   /* the status fields */
    u_char                          reply_uid[NGX_HTTP_OPAMP_UID_LEN];
    u_char                          cs_hash_hex[40];
    u_char                          config_hash_hex[64];
    u_char                          packages_hash_hex[1 + 64];
    u_char                          cs_status[sizeof("APPLYING ") + 64];
    u_char                         *text;   /* config error, names */
    ngx_http_opamp_attrs_t         *attrs;  /* of the description sent */
    ngx_uint_t                      epoch;  /* session_settled_mark() */
    unsigned                        new_uid:1;
} ngx_http_opamp_message_t;


static ngx_int_t ngx_http_opamp_session_description(
    ngx_http_opamp_session_t *s, Opamp__Proto__V1__AgentDescription *d,
    ngx_str_t *out, const char **reason);
static size_t ngx_http_opamp_session_components(ngx_str_t *in, u_char *out);
static ngx_int_t ngx_http_opamp_session_report(ngx_http_opamp_session_t *s,
    ngx_http_opamp_a2s_t *msg, ngx_http_opamp_a2s_scan_t *scan);
static void ngx_http_opamp_session_reported(ngx_http_opamp_report_t *rep,
    ngx_int_t rc, void *data);
static ngx_int_t ngx_http_opamp_session_reply(ngx_http_opamp_session_t *s,
    ngx_http_opamp_message_t *m);
static ngx_int_t ngx_http_opamp_session_error(ngx_http_opamp_session_t *s,
    u_char *uid, ngx_uint_t type, const char *reason);
static void ngx_http_opamp_session_free_message(
    ngx_http_opamp_message_t *m);
static void ngx_http_opamp_session_new_uid(u_char *uid);
static void ngx_http_opamp_session_register(ngx_http_opamp_session_t *s);
static void ngx_http_opamp_session_unregister(ngx_http_opamp_session_t *s);
static void ngx_http_opamp_session_set_uid(ngx_http_opamp_session_t *s,
    u_char *uid);
static void ngx_http_opamp_session_kick(ngx_http_opamp_report_t *rep);
static ngx_int_t ngx_http_opamp_session_config_status(
    ngx_http_opamp_message_t *m, ngx_http_opamp_a2s_t *msg);


ngx_rbtree_t              ngx_http_opamp_sessions;
static ngx_rbtree_node_t  ngx_http_opamp_sessions_sentinel;

/* "config <uid>" finds the agent's sessions without walking them all */
ngx_rbtree_t              ngx_http_opamp_sessions_by_uid;
static ngx_rbtree_node_t  ngx_http_opamp_sessions_by_uid_sentinel;

static uint64_t           ngx_http_opamp_conn_counter;


ngx_int_t
ngx_http_opamp_session_init_process(ngx_cycle_t *cycle)
{
    ngx_rbtree_init(&ngx_http_opamp_sessions,
                    &ngx_http_opamp_sessions_sentinel,
                    ngx_rbtree_insert_value);

    ngx_rbtree_init(&ngx_http_opamp_sessions_by_uid,
                    &ngx_http_opamp_sessions_by_uid_sentinel,
                    ngx_rbtree_insert_value);

    ngx_http_opamp_redis_set_message_handler(ngx_http_opamp_session_pubsub);

    return NGX_OK;
}


void
ngx_http_opamp_session_exit_process(ngx_cycle_t *cycle)
{
    /* connections are closed by nginx itself; nothing is left to free */
}


ngx_http_opamp_session_t *
ngx_http_opamp_session_create(ngx_http_request_t *r, ngx_uint_t transport)
{
    ngx_http_opamp_session_t  *s;

    s = ngx_pcalloc(r->pool, sizeof(ngx_http_opamp_session_t));
    if (s == NULL) {
        return NULL;
    }

    ngx_http_opamp_session_init(s, r, transport);

    return s;
}


void
ngx_http_opamp_session_init(ngx_http_opamp_session_t *s,
    ngx_http_request_t *r, ngx_uint_t transport)
{
    /* a WebSocket lets its request go once its first reply is queued */
    s->request = (transport == NGX_HTTP_OPAMP_TRANSPORT_HTTP) ? r : NULL;
    s->connection = r->connection;
    s->conf = ngx_http_get_module_loc_conf(r, ngx_http_opamp_module);
    s->transport = transport;
    s->conn_number = ++ngx_http_opamp_conn_counter;
}


/*
 * An AgentToServer is checked on the wire first (nesting, element counts,
 * wire types, UTF-8), so that nothing a client sends can make protobuf-c
 * recurse or allocate without bound; then only the fields the module reads
 * are decoded, and the status fields are stored as the agent sent them.
 */

ngx_int_t
ngx_http_opamp_session_message(ngx_http_opamp_session_t *s, u_char *data,
    size_t len)
{
    u_char                         reason[128];
    ngx_int_t                      rc;
    ngx_http_opamp_a2s_t          *msg;
    ngx_http_opamp_a2s_scan_t      scan;
    ngx_http_opamp_proto_alloc_t   alloc;

    if (ngx_http_opamp_proto_scan_a2s(&scan, data, len, s->connection->log)
        != NGX_OK)
    {
        if (scan.error == NULL) {
            return NGX_ERROR;
        }

        *ngx_snprintf(reason, sizeof(reason) - 1, "%s: %s",
                      scan.limit ? "AgentToServer refused"
                                 : "AgentToServer is not a valid protobuf "
                                   "message",
                      scan.error) = '\0';

        return ngx_http_opamp_session_bad_request(s, (char *) reason);
    }

    msg = ngx_http_opamp_proto_decode_a2s(&alloc, scan.view.data,
                                          scan.view.len, s->connection->log);
    if (msg == NULL) {
        ngx_http_opamp_proto_scan_free(&scan);

        if (alloc.exhausted) {
            return ngx_http_opamp_session_bad_request(s,
                       "AgentToServer needs more memory to decode than "
                       "its size allows");
        }

        return ngx_http_opamp_session_bad_request(s,
                   "AgentToServer is not a valid protobuf message");
    }

    if (msg->instance_uid.len != NGX_HTTP_OPAMP_UID_LEN) {
        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "opamp: instance_uid of %uz bytes, must be 16",
                      msg->instance_uid.len);
        rc = ngx_http_opamp_session_bad_request(s,
                   "instance_uid must be 16 bytes");
        goto done;
    }

    if (s->has_header_uid
        && ngx_memcmp(s->header_uid, msg->instance_uid.data,
                      NGX_HTTP_OPAMP_UID_LEN) != 0)
    {
        rc = ngx_http_opamp_session_bad_request(s,
                   "OpAMP-Instance-UID header does not match instance_uid");
        goto done;
    }

    ngx_http_opamp_metrics_message(s->transport, len);

    if (s->log) {
        ngx_memcpy(s->log->uid, msg->instance_uid.data,
                   NGX_HTTP_OPAMP_UID_LEN);
        s->log->sequence_num = msg->sequence_num;
        s->log->has_uid = 1;
    }

#if (NGX_DEBUG)
    {
    u_char  text[NGX_HTTP_OPAMP_UID_STR_LEN];

    ngx_http_opamp_uid_format(text, msg->instance_uid.data);

    ngx_log_debug5(NGX_LOG_DEBUG_HTTP, s->connection->log, 0,
                   "opamp agent %*s sequence %uL capabilities 0x%xL, "
                   "%uz bytes", (size_t) NGX_HTTP_OPAMP_UID_STR_LEN, text,
                   (uint64_t) msg->sequence_num, (uint64_t) msg->capabilities,
                   len);
    }
#endif

    rc = ngx_http_opamp_session_report(s, msg, &scan);

done:

    ngx_http_opamp_proto_free_a2s(&alloc, msg);
    ngx_http_opamp_proto_scan_free(&scan);

    return rc;
}


/*
 * The most an agent description may hold, as stored (docs/operations.md,
 * "Limits"): the scripts read it at every report, config change (up to
 * 64 agents in one call) and admin listing, inside Redis's one thread.
 * Real agents describe themselves in a few dozen attributes and a KB or
 * two; 128 is OpenTelemetry's default limit of attributes.
 */
#define NGX_HTTP_OPAMP_MAX_ATTRIBUTES        128
#define NGX_HTTP_OPAMP_MAX_ATTRIBUTES_TEXT   "128"
#define NGX_HTTP_OPAMP_MAX_DESCRIPTION       65536
#define NGX_HTTP_OPAMP_MAX_DESCRIPTION_TEXT  "65536"


/* AgentToServer numbers of the status fields the scripts read */
#define NGX_HTTP_OPAMP_SESSION_DESCRIPTION  3
#define NGX_HTTP_OPAMP_SESSION_COMPONENTS   14


/* the status fields of the agent hash and their AgentToServer numbers */
static ngx_uint_t  ngx_http_opamp_session_status_fields[] = {
    3,      /* NGX_HTTP_OPAMP_FIELD_DESCRIPTION */
    5,      /* NGX_HTTP_OPAMP_FIELD_HEALTH */
    6,      /* NGX_HTTP_OPAMP_FIELD_EFFECTIVE_CONFIG */
    7,      /* NGX_HTTP_OPAMP_FIELD_REMOTE_CONFIG_STATUS */
    8,      /* NGX_HTTP_OPAMP_FIELD_PACKAGE_STATUSES */
    12,     /* NGX_HTTP_OPAMP_FIELD_CUSTOM_CAPABILITIES */
    14,     /* NGX_HTTP_OPAMP_FIELD_AVAILABLE_COMPONENTS */
    15      /* NGX_HTTP_OPAMP_FIELD_CONN_SETTINGS_STATUS */
};


/* the status fields that report.lua and the other scripts never read */
static ngx_uint_t  ngx_http_opamp_session_compressed[] = {
    0,      /* description: groups' selectors match its attributes */
    1,      /* health */
    0,      /* effective_config: shared by the SHA1 of its bytes */
    1,      /* remote_config_status */
    1,      /* package_statuses */
    1,      /* custom_capabilities */
    0,      /* available_components: the script reads its hash */
    1       /* connection_settings_status */
};


static ngx_int_t
ngx_http_opamp_session_report(ngx_http_opamp_session_t *s,
    ngx_http_opamp_a2s_t *msg, ngx_http_opamp_a2s_scan_t *scan)
{
    u_char                               *p;
    size_t                                size, len;
    ngx_str_t                             desc;
    ngx_int_t                             rc;
    ngx_uint_t                            i, n;
    const char                           *reason;
    ngx_http_opamp_message_t             *m;
    ngx_http_opamp_report_t              *rep;
    ngx_http_opamp_store_req_t           *req;
    Opamp__Proto__V1__CustomMessage      *cm;

    /* one message cannot hold more than the agent may keep in Redis */

    size = 0;

    for (i = 0; i < NGX_HTTP_OPAMP_FIELD_COUNT; i++) {
        size += scan->field[ngx_http_opamp_session_status_fields[i]].len;
    }

    if (size > s->conf->max_agent_state) {
        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "opamp: status fields of %uz bytes exceed "
                      "opamp_max_agent_state", size);
        return ngx_http_opamp_session_bad_request(s,
                   "agent state exceeds opamp_max_agent_state");
    }

    cm = msg->custom_message;

    if (cm && cm->capability && cm->capability[0]
        && NGX_HTTP_OPAMP_UID_STR_LEN + ngx_strlen(cm->capability)
           + ngx_strlen(cm->type) + cm->data.len
           > s->conf->custom_messages_size)
    {
        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "opamp: custom message of %uz bytes exceeds "
                      "opamp_custom_messages_size", cm->data.len);
        return ngx_http_opamp_session_bad_request(s,
                   "custom message exceeds opamp_custom_messages_size");
    }

    /* the description as the scripts read it: bounded, and canonical */

    ngx_str_null(&desc);

    if (msg->agent_description
        && scan->count[NGX_HTTP_OPAMP_SESSION_DESCRIPTION])
    {
        rc = ngx_http_opamp_session_description(s, msg->agent_description,
                                                &desc, &reason);
        if (rc == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (rc == NGX_DECLINED) {
            ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                          "opamp: %s", reason);
            return ngx_http_opamp_session_bad_request(s, reason);
        }

        size = size - scan->field[NGX_HTTP_OPAMP_SESSION_DESCRIPTION].len
               + desc.len;
    }

    m = ngx_calloc(sizeof(ngx_http_opamp_message_t), s->connection->log);
    if (m == NULL) {
        if (desc.data) {
            ngx_free(desc.data);
        }

        return NGX_ERROR;
    }

    m->session = s;
    rep = &m->report;

    ngx_memcpy(m->reply_uid, msg->instance_uid.data, NGX_HTTP_OPAMP_UID_LEN);
    ngx_memcpy(rep->uid, msg->instance_uid.data, NGX_HTTP_OPAMP_UID_LEN);

    /* the agent wants an identity from the server: store what it reports
     * under the new one, which it uses from its next message on */

    if (msg->flags & NGX_HTTP_OPAMP_AFLAG_REQUEST_INSTANCE_UID) {
        ngx_http_opamp_session_new_uid(rep->uid);
        m->new_uid = 1;
    }

    rep->sequence_num = msg->sequence_num;
    rep->capabilities = msg->capabilities;
    rep->conn_number = s->conn_number;
    rep->transport = s->transport;
    rep->agent_timeout = s->conf->agent_timeout;
    rep->max_state = s->conf->max_agent_state;
    rep->custom_size = s->conf->custom_messages_size;
    rep->first_message = (s->messages == 0
                          || s->transport == NGX_HTTP_OPAMP_TRANSPORT_HTTP);
    rep->disconnect = (msg->agent_disconnect != NULL);
    rep->healthy = msg->health ? (msg->health->healthy ? 1 : 0) : 2;

    /* who nginx says the agent is: the scripts bind the uid to it and
     * match selectors on its server-set attributes first */

    if (s->identity) {
        rep->identity = s->identity->identity;
        rep->server_attributes = s->identity->attributes;
        rep->identity_mark = s->identity->mark;
    }

    /* the credential presented, which the script checks, and a new token
     * that goes out with the OpAMP settings the agent may be offered (the
     * script keeps its digest as the agent's next token) */

    if (s->token) {
        rep->token_presented.data = s->token->presented;
        rep->token_presented.len = s->token->presented_len;
        rep->identity_mark.data = s->token->mark;
        rep->identity_mark.len = sizeof(s->token->mark);

        if (msg->capabilities & NGX_HTTP_OPAMP_ACAP_ACCEPTS_OPAMP_SETTINGS) {
            if (ngx_http_opamp_token_mint(rep->token, rep->token_digest,
                                          s->connection->log)
                != NGX_OK)
            {
                ngx_free(m);

                if (desc.data) {
                    ngx_free(desc.data);
                }

                return NGX_ERROR;
            }

            rep->token_mint.data = rep->token_digest;
            rep->token_mint.len = sizeof(rep->token_digest);
        }
    }

    /* a WebSocket agent that connects again gets its config again, even if
     * it was offered on an earlier connection and never acknowledged */
    rep->force_config = (s->messages == 0
                         && s->transport == NGX_HTTP_OPAMP_TRANSPORT_WS);

    s->capabilities = msg->capabilities;

    /* what a fleet change matches: kept by the worker for a WebSocket
     * agent that takes remote config, once Redis took the description */

    if (msg->agent_description
        && s->transport == NGX_HTTP_OPAMP_TRANSPORT_WS
        && (msg->capabilities & NGX_HTTP_OPAMP_ACAP_ACCEPTS_REMOTE_CONFIG))
    {
        m->attrs = ngx_http_opamp_fanout_attributes(msg->agent_description,
                                                    s->identity,
                                                    s->connection->log);
    }

    if (ngx_http_opamp_session_config_status(m, msg) != NGX_OK) {
        ngx_http_opamp_session_free_message(m);
        return NGX_ERROR;
    }

    /* the status fields as the agent sent them, so that any protobuf
     * library decodes what is stored; copied, because the message's
     * buffer goes before Redis answers (and a NOSCRIPT resends them) */

    m->stored = ngx_alloc(size ? size : 1, s->connection->log);
    if (m->stored == NULL) {
        if (desc.data) {
            ngx_free(desc.data);
        }

        ngx_http_opamp_session_free_message(m);
        return NGX_ERROR;
    }

    p = m->stored;

    for (i = 0; i < NGX_HTTP_OPAMP_FIELD_COUNT; i++) {
        n = ngx_http_opamp_session_status_fields[i];

        if (scan->count[n] == 0) {
            continue;
        }

        rep->fields[i].data = p;

        if (n == NGX_HTTP_OPAMP_SESSION_DESCRIPTION && desc.data) {
            rep->fields[i].len = desc.len;
            p = ngx_cpymem(p, desc.data, desc.len);
            ngx_free(desc.data);
            desc.data = NULL;
            continue;
        }

        if (n == NGX_HTTP_OPAMP_SESSION_COMPONENTS) {
            rep->fields[i].len = ngx_http_opamp_session_components(
                                     &scan->field[n], p);
            p += rep->fields[i].len;
            continue;
        }

        /* what the scripts never read is stored compressed where that
         * saves bytes: an agent's health tree is most of what is its
         * own in Redis (docs/redis-schema.md) */

        if (ngx_http_opamp_session_compressed[i]) {
            rc = ngx_http_opamp_stored_deflate(s->connection->log,
                                               &scan->field[n], p, &len);
            if (rc == NGX_ERROR) {
                ngx_http_opamp_session_free_message(m);
                return NGX_ERROR;
            }

            if (rc == NGX_OK) {
                rep->fields[i].len = len;
                p += len;
                continue;
            }
        }

        rep->fields[i].len = scan->field[n].len;
        p = ngx_cpymem(p, scan->field[n].data, scan->field[n].len);
    }

    /*
     * The module's own part of the connection settings offer (the
     * heartbeat interval); the script adds what operators stored and
     * hashes both, to tell whether the agent has been offered them.
     */

    if (ngx_http_opamp_session_cs_hash(s, m->cs_hash_hex) != NGX_OK) {
        ngx_http_opamp_session_free_message(m);
        return NGX_ERROR;
    }

    rep->conn_settings_hash.data = m->cs_hash_hex;
    rep->conn_settings_hash.len = sizeof(m->cs_hash_hex);

    s->busy = 1;

    /* a heartbeat of a settled agent: no need to ask Redis */

    if (s->transport == NGX_HTTP_OPAMP_TRANSPORT_WS
        && ngx_http_opamp_session_settled_answer(s, rep))
    {
        s->pending = m;
        s->messages++;
        ngx_http_opamp_session_reported(rep, NGX_OK, m);
        return NGX_OK;
    }

    m->epoch = ngx_http_opamp_session_settled_mark();

    req = ngx_http_opamp_store_report(rep, ngx_http_opamp_session_reported,
                                      m);
    if (req == NULL) {
        s->busy = 0;
        ngx_http_opamp_session_free_message(m);

        /* Redis is down: the agent keeps its connection and retries */

        s->unavailable = 1;

        if (ngx_http_opamp_session_error(s, msg->instance_uid.data,
                NGX_HTTP_OPAMP_ERR_UNAVAILABLE,
                "the agent state store is unavailable, retry later")
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        s->resume(s);
        return NGX_OK;
    }

    m->request = req;
    s->pending = m;
    s->messages++;

    return NGX_OK;
}


/*
 * The description as the scripts read it (lib/attributes.lua, at every
 * report, check and admin listing): protobuf-c's encoding of what it
 * decoded, so that a value an agent sent a thousand times is there once
 * (the last, as protobuf reads it) and the scripts' cost is a few fields
 * per attribute, never per byte sent; fields protobuf-c does not know are
 * kept, as it keeps them (a newer agent's).  Bounded in attributes and in
 * bytes (docs/operations.md, "Limits"): NGX_DECLINED and *reason past
 * either.
 */

static ngx_int_t
ngx_http_opamp_session_description(ngx_http_opamp_session_t *s,
    Opamp__Proto__V1__AgentDescription *d, ngx_str_t *out,
    const char **reason)
{
    *reason = NULL;

    if (d->n_identifying_attributes + d->n_non_identifying_attributes
        > NGX_HTTP_OPAMP_MAX_ATTRIBUTES)
    {
        *reason = "agent description has more than "
                  NGX_HTTP_OPAMP_MAX_ATTRIBUTES_TEXT " attributes";
        return NGX_DECLINED;
    }

    if (protobuf_c_message_get_packed_size(&d->base)
        > NGX_HTTP_OPAMP_MAX_DESCRIPTION)
    {
        *reason = "agent description exceeds "
                  NGX_HTTP_OPAMP_MAX_DESCRIPTION_TEXT " bytes";
        return NGX_DECLINED;
    }

    return ngx_http_opamp_proto_pack(&d->base, out, s->connection->log);
}


/* a varint of the wire scan's checked bytes; NULL past the end */

static u_char *
ngx_http_opamp_session_varint(u_char *p, u_char *last, uint64_t *v)
{
    ngx_uint_t  shift;

    *v = 0;

    for (shift = 0; p < last && shift < 64; shift += 7) {
        *v |= (uint64_t) (*p & 0x7f) << shift;

        if (*p++ < 0x80) {
            return p;
        }
    }

    return NULL;
}


/*
 * AvailableComponents with its hash first: the script (components_of()
 * in report.lua) reads two fields to know the hash and whether a list
 * came, however long the list, instead of walking every entry to the
 * hash that protobuf writers put last.  The hash once (the last, as
 * protobuf reads it), then every other field in its order; protobuf
 * readers take fields in any order.  Never longer than the input.
 */

static size_t
ngx_http_opamp_session_components(ngx_str_t *in, u_char *out)
{
    u_char    *p, *last, *start, *hash, *o;
    uint64_t   tag, len;
    size_t     hash_len;
    ngx_uint_t pass;

    o = out;
    hash = NULL;
    hash_len = 0;

    for (pass = 0; pass < 2; pass++) {
        p = in->data;
        last = in->data + in->len;

        if (pass == 1 && hash) {
            *o++ = 0x12;
            len = hash_len;

            while (len >= 0x80) {
                *o++ = (u_char) (len | 0x80);
                len >>= 7;
            }

            *o++ = (u_char) len;
            o = ngx_cpymem(o, hash, hash_len);
        }

        while (p < last) {
            start = p;

            p = ngx_http_opamp_session_varint(p, last, &tag);
            if (p == NULL) {
                return o - out;
            }

            switch (tag & 7) {

            case 0:
                p = ngx_http_opamp_session_varint(p, last, &len);
                break;

            case 1:
                p = (last - p >= 8) ? p + 8 : NULL;
                break;

            case 2:
                p = ngx_http_opamp_session_varint(p, last, &len);
                if (p && (uint64_t) (last - p) >= len) {
                    if (tag == 0x12) {
                        hash = p;
                        hash_len = len;
                    }

                    p += len;

                } else {
                    p = NULL;
                }

                break;

            case 5:
                p = (last - p >= 4) ? p + 4 : NULL;
                break;

            default:
                p = NULL;
            }

            if (p == NULL) {
                /* the wire scan let nothing malformed through */
                return o - out;
            }

            if (pass == 1 && tag != 0x12) {
                o = ngx_cpymem(o, start, p - start);
            }
        }
    }

    return o - out;
}


static void
ngx_http_opamp_session_reported(ngx_http_opamp_report_t *rep, ngx_int_t rc,
    void *data)
{
    ngx_http_opamp_message_t *m = data;

    u_char                     uid[NGX_HTTP_OPAMP_UID_LEN];
    const char                *reason;
    ngx_http_opamp_session_t  *s;

    s = m->session;
    s->pending = NULL;
    s->busy = 0;

    if (m->request) {
        /* Redis answered: what it holds now, see session_settled.c */

        if (rc == NGX_OK && (rep->verdict == NGX_HTTP_OPAMP_VERDICT_OK
                             || rep->verdict
                                == NGX_HTTP_OPAMP_VERDICT_TAKEOVER)
            && !m->new_uid)
        {
            ngx_http_opamp_session_settled_learn(s, rep, m->epoch);

        } else {
            ngx_http_opamp_session_settled_forget(s);
        }
    }

    if (rc != NGX_OK) {
        s->unavailable = 1;

        (void) ngx_http_opamp_session_error(s, m->reply_uid,
                NGX_HTTP_OPAMP_ERR_UNAVAILABLE,
                "the agent state store did not answer, retry later");

        /* the message was not persisted: ask for all of it next time */
        s->messages = 0;

        ngx_http_opamp_session_free_message(m);
        s->resume(s);
        return;
    }

    switch (rep->verdict) {

    case NGX_HTTP_OPAMP_VERDICT_TOO_LARGE:
        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "opamp: agent state would exceed "
                      "opamp_max_agent_state, nothing stored");

        /* its sequence was not stored: the next message is out of
         * sequence and the agent is asked for all of its state again */

        ngx_http_opamp_session_free_message(m);

        if (ngx_http_opamp_session_bad_request(s,
                "agent state exceeds opamp_max_agent_state")
            != NGX_OK)
        {
            s->resume(s);
        }

        return;

    case NGX_HTTP_OPAMP_VERDICT_IDENTITY:
        ngx_http_opamp_metrics_inc(NGX_HTTP_OPAMP_M_IDENTITY_CONFLICTS);

        if (s->conf->identity_conflict == NGX_HTTP_OPAMP_IDENTITY_NEW_UID) {
            ngx_log_error(NGX_LOG_WARN, s->connection->log, 0,
                          "opamp: instance_uid is bound to another identity "
                          "than \"%V\", assigning a new instance_uid",
                          &rep->identity);

            ngx_http_opamp_session_new_uid(rep->uid);
            m->new_uid = 1;

            /* nothing was stored: the agent reports again under the new
             * uid, where it is unknown and so is asked for its full state */

            rep->full_state = 0;
            s->messages = 0;
            break;
        }

        ngx_log_error(NGX_LOG_WARN, s->connection->log, 0,
                      "opamp: instance_uid is bound to another identity "
                      "than \"%V\", refused", &rep->identity);

        ngx_memcpy(uid, m->reply_uid, NGX_HTTP_OPAMP_UID_LEN);
        ngx_http_opamp_session_free_message(m);

        /* a plain HTTP agent gets 403, a WebSocket agent the error and
         * then a close (1008, policy violation): it may not go on under
         * this uid, and another uid is its own choice to make */

        s->forbidden = 1;

        if (ngx_http_opamp_session_error(s, uid,
                NGX_HTTP_OPAMP_ERR_BAD_REQUEST,
                "instance_uid is bound to another agent identity")
            == NGX_OK
            && s->transport == NGX_HTTP_OPAMP_TRANSPORT_WS)
        {
            s->close(s, 1008, "instance_uid is bound to another agent "
                              "identity");
        }

        s->forbidden = 0;
        s->resume(s);
        return;

    case NGX_HTTP_OPAMP_VERDICT_TOKEN:
        ngx_http_opamp_metrics_inc(NGX_HTTP_OPAMP_M_TOKEN_REFUSALS);

        reason = "the token is not this instance_uid's";

        if (rep->holder_channel.len == 7) {   /* "revoked" */
            reason = "the agent's token was revoked";

        } else if (rep->holder_channel.len == 10) {   /* "enrollment" */
            reason = "the enrollment credential is not taken for an "
                     "instance_uid that holds a token";
        }

        ngx_log_error(NGX_LOG_WARN, s->connection->log, 0,
                      "opamp: 403 refused: %s", reason);

        ngx_memcpy(uid, m->reply_uid, NGX_HTTP_OPAMP_UID_LEN);
        ngx_http_opamp_session_free_message(m);

        /* as an identity conflict: nothing was stored, a plain HTTP agent
         * gets 403, a WebSocket agent the error and a close (1008) */

        s->forbidden = 1;

        if (ngx_http_opamp_session_error(s, uid,
                NGX_HTTP_OPAMP_ERR_BAD_REQUEST, reason)
            == NGX_OK
            && s->transport == NGX_HTTP_OPAMP_TRANSPORT_WS)
        {
            s->close(s, 1008, reason);
        }

        s->forbidden = 0;
        s->resume(s);
        return;

    case NGX_HTTP_OPAMP_VERDICT_DUPLICATE:
        ngx_log_error(NGX_LOG_WARN, s->connection->log, 0,
                      "opamp: instance_uid already held by live connection "
                      "\"%V\", assigning a new instance_uid",
                      &rep->holder_conn);

        ngx_http_opamp_session_new_uid(rep->uid);
        m->new_uid = 1;

        /* nothing was stored: the agent reports again under the new uid,
         * where it is unknown and so is asked for its full state */

        rep->full_state = 0;
        s->messages = 0;
        break;

    case NGX_HTTP_OPAMP_VERDICT_TAKEOVER:
        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "opamp: agent reconnected, closing its previous "
                      "connection \"%V\"", &rep->holder_conn);

        ngx_http_opamp_session_kick(rep);
        /* fall through */

    default:
        ngx_http_opamp_session_set_uid(s, rep->uid);

        if (rep->disconnect) {
            s->disconnected = 1;
        }

        if (s->transport == NGX_HTTP_OPAMP_TRANSPORT_WS && !s->registered) {
            ngx_http_opamp_session_register(s);
        }

        if (s->transport == NGX_HTTP_OPAMP_TRANSPORT_WS && !rep->disconnect) {
            ngx_http_opamp_fanout_learn(s, rep->config_view
                                           ? rep->config_view->element
                                           : NULL,
                                        m->attrs);
            m->attrs = NULL;
        }
    }

    if (ngx_http_opamp_session_reply(s, m) != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, s->connection->log, 0,
                      "opamp: could not build a ServerToAgent");
    }

    ngx_http_opamp_session_free_message(m);

    /* a config changed while this message was in Redis */

    if (s->recheck && s->registered && !s->closed) {
        s->recheck = 0;
        ngx_http_opamp_session_check(s, 0);
    }

    s->resume(s);
}


static ngx_int_t
ngx_http_opamp_session_reply(ngx_http_opamp_session_t *s,
    ngx_http_opamp_message_t *m)
{
    ngx_int_t                                  rc;
    ngx_str_t                                  out;
    ngx_http_opamp_report_t                   *rep;
    Opamp__Proto__V1__ServerToAgent            s2a =
                                   OPAMP__PROTO__V1__SERVER_TO_AGENT__INIT;
    Opamp__Proto__V1__AgentIdentification      ident =
                             OPAMP__PROTO__V1__AGENT_IDENTIFICATION__INIT;
    ngx_http_opamp_owed_t                      owed;
    Opamp__Proto__V1__CustomCapabilities       ccap =
                               OPAMP__PROTO__V1__CUSTOM_CAPABILITIES__INIT;

    rep = &m->report;

    s2a.instance_uid.data = m->reply_uid;
    s2a.instance_uid.len = NGX_HTTP_OPAMP_UID_LEN;

    /* required in the first reply of a connection; a plain HTTP agent
     * cannot tell which reply is its first, so it gets them every time */

    s2a.capabilities = NGX_HTTP_OPAMP_SERVER_CAPABILITIES;

    /* the server's custom capabilities go with its capabilities */

    if (s->conf->custom_capabilities && rep->first_message) {
        ccap.n_capabilities = s->conf->custom_capabilities->nelts;
        ccap.capabilities = s->conf->custom_capabilities->elts;
        s2a.custom_capabilities = &ccap;
    }

    if (rep->full_state) {
        s2a.flags |= NGX_HTTP_OPAMP_SFLAG_REPORT_FULL_STATE;

        /* a round trip for the agent, worth seeing when it repeats */

        ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                      "opamp: asking the agent for its full state");
    }

    if (m->new_uid) {
        ident.new_instance_uid.data = rep->uid;
        ident.new_instance_uid.len = NGX_HTTP_OPAMP_UID_LEN;
        s2a.agent_identification = &ident;
    }

    if (rep->report_components) {
        s2a.flags |= NGX_HTTP_OPAMP_SFLAG_REPORT_AVAILABLE_COMPONENTS;
    }

    rc = ngx_http_opamp_session_owed(s, rep, &s2a, &owed);

    if (rc == NGX_OK) {
        rc = ngx_http_opamp_proto_pack((ProtobufCMessage *) &s2a, &out,
                                       s->connection->log);
    }

    ngx_http_opamp_session_free_owed(&owed);

    if (rc != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_http_opamp_session_sent(s, &s2a);

    ngx_log_debug6(NGX_LOG_DEBUG_HTTP, s->connection->log, 0,
                   "opamp reply flags 0x%xL, remote config %d, connection "
                   "settings %d, packages %d, command %d, %uz bytes",
                   (uint64_t) s2a.flags, s2a.remote_config != NULL,
                   s2a.connection_settings != NULL,
                   s2a.packages_available != NULL, s2a.command != NULL,
                   out.len);

    rc = s->send(s, out.data, out.len);

    ngx_free(out.data);

    return (rc == NGX_ERROR) ? NGX_ERROR : NGX_OK;
}


/* a ServerToAgent goes to the agent: the metrics and $opamp_reply */

void
ngx_http_opamp_session_sent(ngx_http_opamp_session_t *s,
    ngx_http_opamp_s2a_t *s2a)
{
    ngx_uint_t  parts;

    parts = ngx_http_opamp_metrics_parts(s2a);

    ngx_http_opamp_metrics_reply(s->transport, parts);

    if (s->log) {
        s->log->reply |= parts;
        s->log->replied = 1;
    }
}


ngx_int_t
ngx_http_opamp_session_bad_request(ngx_http_opamp_session_t *s,
    const char *reason)
{
    s->bad_request = 1;

    if (ngx_http_opamp_session_error(s, s->has_uid ? s->uid : NULL,
                                     NGX_HTTP_OPAMP_ERR_BAD_REQUEST, reason)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    s->bad_request = 0;
    s->resume(s);

    return NGX_OK;
}


static ngx_int_t
ngx_http_opamp_session_error(ngx_http_opamp_session_t *s, u_char *uid,
    ngx_uint_t type, const char *reason)
{
    ngx_int_t                            rc;
    ngx_str_t                            out;
    Opamp__Proto__V1__ServerToAgent      s2a =
                                   OPAMP__PROTO__V1__SERVER_TO_AGENT__INIT;
    Opamp__Proto__V1__ServerErrorResponse err =
                             OPAMP__PROTO__V1__SERVER_ERROR_RESPONSE__INIT;
    Opamp__Proto__V1__RetryInfo          retry =
                                      OPAMP__PROTO__V1__RETRY_INFO__INIT;

    ngx_log_error(NGX_LOG_INFO, s->connection->log, 0,
                  "opamp: answering %s: %s",
                  type == NGX_HTTP_OPAMP_ERR_BAD_REQUEST
                  ? "BAD_REQUEST" : "UNAVAILABLE", reason);

    ngx_http_opamp_metrics_error(type != NGX_HTTP_OPAMP_ERR_BAD_REQUEST,
                                 reason);

    /* an error reply carries nothing but the error and the uid */

    if (uid) {
        s2a.instance_uid.data = uid;
        s2a.instance_uid.len = NGX_HTTP_OPAMP_UID_LEN;
    }

    err.type = type;
    err.error_message = (char *) reason;

    if (type == NGX_HTTP_OPAMP_ERR_UNAVAILABLE) {
        retry.retry_after_nanoseconds =
            (uint64_t) NGX_HTTP_OPAMP_RETRY_AFTER_SEC * 1000000000;
        err.details_case =
            OPAMP__PROTO__V1__SERVER_ERROR_RESPONSE__DETAILS_RETRY_INFO;
        err.retry_info = &retry;
    }

    s2a.error_response = &err;

    ngx_http_opamp_session_sent(s, &s2a);

    if (ngx_http_opamp_proto_pack((ProtobufCMessage *) &s2a, &out,
                                  s->connection->log)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    rc = s->send(s, out.data, out.len);

    ngx_free(out.data);

    return (rc == NGX_ERROR) ? NGX_ERROR : NGX_OK;
}


void
ngx_http_opamp_session_finalize(ngx_http_opamp_session_t *s)
{
    ngx_uint_t                     i;
    ngx_http_opamp_message_t      *m;
    ngx_http_opamp_check_batch_t  *b;

    if (s->closed) {
        return;
    }

    s->closed = 1;

    if (s->pending) {
        m = s->pending;
        ngx_http_opamp_store_cancel(m->request);
        ngx_http_opamp_session_free_message(m);
        s->pending = NULL;
    }

    if (s->checking) {
        b = s->checking;

        /* the batch goes on for the others and skips this one */

        for (i = 0; i < b->n; i++) {
            if (b->sessions[i] == s) {
                b->sessions[i] = NULL;
            }
        }

        s->checking = NULL;
    }

    ngx_http_opamp_session_unregister(s);
    ngx_http_opamp_fanout_forget(s);

    if (s->transport == NGX_HTTP_OPAMP_TRANSPORT_WS && s->has_uid
        && !s->disconnected)
    {
        ngx_http_opamp_store_disconnect(s->uid, s->conn_number,
                                        s->settled.chain
                                        && s->settled.last_seq
                                           != s->settled.stored_seq,
                                        s->settled.last_seq);
    }
}


void
ngx_http_opamp_session_touch(ngx_http_opamp_session_t *s)
{
    if (s->has_uid && !s->disconnected && !s->closed) {
        ngx_http_opamp_store_touch(s->uid, s->conn_number,
                                   s->conf->agent_timeout);
    }
}


ngx_http_opamp_session_t *
ngx_http_opamp_session_lookup(uint64_t conn_number)
{
    ngx_rbtree_node_t  *node, *sentinel;

    node = ngx_http_opamp_sessions.root;
    sentinel = ngx_http_opamp_sessions.sentinel;

    while (node != sentinel) {

        if (conn_number < node->key) {
            node = node->left;
            continue;
        }

        if (conn_number > node->key) {
            node = node->right;
            continue;
        }

        return (ngx_http_opamp_session_t *)
                   ((u_char *) node
                    - offsetof(ngx_http_opamp_session_t, node));
    }

    return NULL;
}


static void
ngx_http_opamp_session_register(ngx_http_opamp_session_t *s)
{
    s->node.key = (ngx_rbtree_key_t) s->conn_number;
    ngx_rbtree_insert(&ngx_http_opamp_sessions, &s->node);

    s->uid_node.key = ngx_http_opamp_session_uid_key(s->uid);
    ngx_rbtree_insert(&ngx_http_opamp_sessions_by_uid, &s->uid_node);

    s->registered = 1;
}


static void
ngx_http_opamp_session_unregister(ngx_http_opamp_session_t *s)
{
    if (s->registered) {
        ngx_rbtree_delete(&ngx_http_opamp_sessions, &s->node);
        ngx_rbtree_delete(&ngx_http_opamp_sessions_by_uid, &s->uid_node);
        s->registered = 0;
    }
}


/* the two halves of a uid folded: random in UUIDv4 and in UUIDv7 alike */

ngx_rbtree_key_t
ngx_http_opamp_session_uid_key(u_char *uid)
{
    uint64_t  a, b;

    ngx_memcpy(&a, uid, 8);
    ngx_memcpy(&b, uid + 8, 8);

    return (ngx_rbtree_key_t) (a ^ b);
}


/* the uid of the last message; an agent may change it on its connection
 * (after the server gave it a new one) */

static void
ngx_http_opamp_session_set_uid(ngx_http_opamp_session_t *s, u_char *uid)
{
    if (s->has_uid && ngx_memcmp(s->uid, uid, NGX_HTTP_OPAMP_UID_LEN) == 0) {
        return;
    }

    if (s->registered) {
        ngx_rbtree_delete(&ngx_http_opamp_sessions_by_uid, &s->uid_node);
    }

    ngx_memcpy(s->uid, uid, NGX_HTTP_OPAMP_UID_LEN);
    s->has_uid = 1;

    if (s->registered) {
        s->uid_node.key = ngx_http_opamp_session_uid_key(s->uid);
        ngx_rbtree_insert(&ngx_http_opamp_sessions_by_uid, &s->uid_node);
    }
}


static void
ngx_http_opamp_session_free_message(ngx_http_opamp_message_t *m)
{
    ngx_http_opamp_report_t  *rep;

    rep = &m->report;

    if (m->stored) {
        ngx_free(m->stored);
    }

    if (rep->holder_channel.data) {
        ngx_free(rep->holder_channel.data);
    }

    if (rep->holder_conn.data) {
        ngx_free(rep->holder_conn.data);
    }

    if (m->text) {
        ngx_free(m->text);
    }

    if (m->attrs) {
        ngx_free(m->attrs);
    }

    ngx_free(m);
}


static void
ngx_http_opamp_session_new_uid(u_char *uid)
{
    u_char       rnd[10];
    ngx_uint_t   i;
    uint64_t     ms;
    ngx_time_t  *tp;

    /*
     * ngx_random() is seeded per worker by nginx; instance uids need to be
     * unique, not secret, so it is enough beside the millisecond clock.
     */

    for (i = 0; i < sizeof(rnd); i++) {
        rnd[i] = (u_char) (ngx_random() >> 7);
    }

    tp = ngx_timeofday();
    ms = (uint64_t) tp->sec * 1000 + tp->msec;

    ngx_http_opamp_uid_v7(uid, ms, rnd);
}


static void
ngx_http_opamp_session_kick(ngx_http_opamp_report_t *rep)
{
    u_char     *p;
    u_char      buf[sizeof("kick ") + NGX_HTTP_OPAMP_UID_STR_LEN + 1
                    + NGX_HTTP_OPAMP_CONN_ID_LEN];
    ngx_str_t   payload;

    if (rep->holder_channel.len == 0
        || rep->holder_conn.len > NGX_HTTP_OPAMP_CONN_ID_LEN)
    {
        return;
    }

    p = ngx_cpymem(buf, "kick ", 5);
    ngx_http_opamp_uid_format(p, rep->uid);
    p += NGX_HTTP_OPAMP_UID_STR_LEN;
    *p++ = ' ';
    p = ngx_cpymem(p, rep->holder_conn.data, rep->holder_conn.len);

    payload.data = buf;
    payload.len = p - buf;

    ngx_http_opamp_store_publish(&rep->holder_channel, &payload);
}


/*
 * What the report script needs of the message besides the status fields:
 * the reported RemoteConfigStatus as text, the custom capability names
 * and the custom message (the script reads the attributes that group
 * selectors match from the description itself).  Copied into the
 * message: the decoded AgentToServer is freed before Redis answers.
 */

static ngx_int_t
ngx_http_opamp_session_config_status(ngx_http_opamp_message_t *m,
    ngx_http_opamp_a2s_t *msg)
{
    u_char                               *p;
    size_t                                i, len, elen;
    ngx_http_opamp_report_t              *rep;
    Opamp__Proto__V1__CustomMessage      *cm;
    Opamp__Proto__V1__CustomCapabilities *cc;
    Opamp__Proto__V1__RemoteConfigStatus *rcs;
    Opamp__Proto__V1__ConnectionSettingsStatus  *css;

    static const char  *statuses[] = {
        "UNSET", "APPLIED", "APPLYING", "FAILED"
    };

    rep = &m->report;
    rcs = msg->remote_config_status;

    len = 0;
    elen = 0;

    if (rcs && rcs->error_message) {
        elen = ngx_strlen(rcs->error_message);
    }

    cc = msg->custom_capabilities;

    if (cc) {
        len += 1;

        for (i = 0; i < cc->n_capabilities; i++) {
            len += ngx_strlen(cc->capabilities[i]) + 1;
        }
    }

    cm = msg->custom_message;

    if (cm && cm->capability && cm->capability[0]) {
        len += ngx_strlen(cm->capability) + ngx_strlen(cm->type)
               + cm->data.len;
    }

    if (len + elen == 0) {
        goto status;
    }

    m->text = ngx_alloc(len + elen, ngx_cycle->log);
    if (m->text == NULL) {
        return NGX_ERROR;
    }

    p = m->text;

    if (cc) {
        rep->custom_capabilities.data = p;
        *p++ = '+';

        for (i = 0; i < cc->n_capabilities; i++) {
            if (i) {
                *p++ = '\n';
            }

            p = ngx_cpymem(p, cc->capabilities[i],
                           ngx_strlen(cc->capabilities[i]));
        }

        rep->custom_capabilities.len = p - rep->custom_capabilities.data;
    }

    if (cm && cm->capability && cm->capability[0]) {
        rep->message_capability.data = p;
        rep->message_capability.len = ngx_strlen(cm->capability);
        p = ngx_cpymem(p, cm->capability, rep->message_capability.len);

        rep->message_type.data = p;
        rep->message_type.len = ngx_strlen(cm->type);
        p = ngx_cpymem(p, cm->type, rep->message_type.len);

        rep->message_data.data = p;
        rep->message_data.len = cm->data.len;
        p = ngx_cpymem(p, cm->data.data, cm->data.len);
    }

    if (elen) {
        rep->config_error.data = p;
        rep->config_error.len = elen;
        p = ngx_cpymem(p, rcs->error_message, elen);
    }

status:

    if (msg->package_statuses) {
        len = ngx_min(
                  msg->package_statuses->server_provided_all_packages_hash.len,
                  (sizeof(m->packages_hash_hex) - 1) / 2);

        m->packages_hash_hex[0] = '+';
        rep->packages_hash.data = m->packages_hash_hex;
        rep->packages_hash.len = ngx_hex_dump(m->packages_hash_hex + 1,
            msg->package_statuses->server_provided_all_packages_hash.data,
            len)
            - m->packages_hash_hex;
    }

    css = msg->connection_settings_status;

    if (css) {

        /* "<status> <last_connection_settings_hash in hex>": the script
         * tells from it whether the agent applied the last offer */

        len = ngx_min(css->last_connection_settings_hash.len, 32);
        p = ngx_sprintf(m->cs_status, "%s ",
                        ((size_t) css->status < 4) ? statuses[css->status]
                                                   : "UNSET");
        p = ngx_hex_dump(p, css->last_connection_settings_hash.data, len);

        rep->conn_settings_status.data = m->cs_status;
        rep->conn_settings_status.len = p - m->cs_status;
    }

    if (rcs == NULL) {
        return NGX_OK;
    }

    rep->config_status.data = (u_char *) (((size_t) rcs->status < 4)
                                          ? statuses[rcs->status]
                                          : "UNSET");
    rep->config_status.len = ngx_strlen(rep->config_status.data);

    len = ngx_min(rcs->last_remote_config_hash.len,
                  sizeof(m->config_hash_hex) / 2);

    rep->config_hash.data = m->config_hash_hex;
    rep->config_hash.len = ngx_hex_dump(m->config_hash_hex,
                                        rcs->last_remote_config_hash.data,
                                        len)
                           - m->config_hash_hex;

    return NGX_OK;
}
