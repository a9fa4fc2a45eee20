/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * What the server owes and offers an agent, built into a ServerToAgent
 * from what the report and check scripts answer: the remote config from
 * its hash in Redis, the connection settings (the module's heartbeat
 * interval and what operators stored, filtered by the agent's
 * capabilities) with the hash that tells whether they were offered, the
 * packages, the command and the custom message.
 */


#include "ngx_http_opamp_session.h"
#include "ngx_http_opamp_session_internal.h"
#include "ngx_http_opamp_proto.h"
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_store.h"
#include "ngx_http_opamp_uid.h"

#include <ngx_sha1.h>


static void ngx_http_opamp_session_conn_settings(
    ngx_http_opamp_session_t *s,
    Opamp__Proto__V1__OpAMPConnectionSettings *ocs);
static ngx_int_t ngx_http_opamp_session_remote_config(
    ngx_http_opamp_report_t *rep, Opamp__Proto__V1__AgentRemoteConfig *arc,
    u_char *hash, ngx_log_t *log);
static void ngx_http_opamp_session_free_remote_config(
    Opamp__Proto__V1__AgentRemoteConfig *arc);
static void ngx_http_opamp_session_offers(ngx_http_opamp_session_t *s,
    ngx_http_opamp_report_t *rep, Opamp__Proto__V1__ServerToAgent *s2a,
    ngx_http_opamp_owed_t *o);
static ngx_int_t ngx_http_opamp_session_token_headers(
    ngx_http_opamp_session_t *s, ngx_http_opamp_report_t *rep,
    ngx_http_opamp_owed_t *o);
static void ngx_http_opamp_session_extras(ngx_http_opamp_report_t *rep,
    Opamp__Proto__V1__ServerToAgent *s2a, ngx_http_opamp_owed_t *o);


static void
ngx_http_opamp_session_conn_settings(ngx_http_opamp_session_t *s,
    Opamp__Proto__V1__OpAMPConnectionSettings *ocs)
{
    ocs->heartbeat_interval_seconds = (uint64_t) s->conf->heartbeat_interval;
}


/*
 * The hash of the module's own part of the connection settings offer
 * (the heartbeat interval, inside an opamp part), 40 hex digits: the
 * script adds the parts operators stored that the agent gets and hashes
 * both, to tell whether the agent has been offered them.
 */

ngx_int_t
ngx_http_opamp_session_cs_hash(ngx_http_opamp_session_t *s, u_char *hex)
{
    u_char                                     digest[20];
    ngx_str_t                                  cs;
    ngx_sha1_t                                 sha1;
    Opamp__Proto__V1__OpAMPConnectionSettings  ocs =
                              OPAMP__PROTO__V1__OP_AMPCONNECTION_SETTINGS__INIT;

    /* it depends on the heartbeat interval only: the last one is kept,
     * so that a message does not pack and hash the same bytes again */

    static time_t  last_interval = -1;
    static u_char  last_hex[40];

    if (s->conf->heartbeat_interval == last_interval) {
        ngx_memcpy(hex, last_hex, sizeof(last_hex));
        return NGX_OK;
    }

    ngx_http_opamp_session_conn_settings(s, &ocs);

    if (ngx_http_opamp_proto_pack((ProtobufCMessage *) &ocs, &cs,
                                  s->connection->log)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, cs.data, cs.len);
    ngx_sha1_final(digest, &sha1);
    ngx_free(cs.data);

    ngx_hex_dump(hex, digest, sizeof(digest));

    ngx_memcpy(last_hex, hex, sizeof(last_hex));
    last_interval = s->conf->heartbeat_interval;

    return NGX_OK;
}


/*
 * Builds the AgentRemoteConfig from the fields of a config hash in Redis
 * (docs/redis-schema.md): "file:<name>" bodies, "type:<name>" content
 * types, "hash" the SHA-256 in hex.  The bodies point into the reply;
 * names and types are copied, as protobuf-c wants them NUL-terminated.
 */

static ngx_int_t
ngx_http_opamp_session_remote_config(ngx_http_opamp_report_t *rep,
    Opamp__Proto__V1__AgentRemoteConfig *arc, u_char *hash, ngx_log_t *log)
{
    size_t                                      i, j, n;
    redisReply                                **el, *name, *value;
    Opamp__Proto__V1__AgentConfigMap           *map;
    Opamp__Proto__V1__AgentConfigFile          *file;
    Opamp__Proto__V1__AgentConfigMap__ConfigMapEntry  *entry;

    el = rep->owed_config->element;
    n = rep->owed_config->elements / 2;

    map = ngx_calloc(sizeof(Opamp__Proto__V1__AgentConfigMap)
                     + n * sizeof(void *), log);
    if (map == NULL) {
        return NGX_ERROR;
    }

    opamp__proto__v1__agent_config_map__init(map);
    map->config_map = (Opamp__Proto__V1__AgentConfigMap__ConfigMapEntry **)
                          (map + 1);
    arc->config = map;

    for (i = 0; i < n; i++) {
        name = el[2 * i];
        value = el[2 * i + 1];

        if (name->type != REDIS_REPLY_STRING || name->len <= 5
            || ngx_strncmp(name->str, "file:", 5) != 0
            || value->type != REDIS_REPLY_STRING)
        {
            continue;
        }

        entry = ngx_calloc(sizeof(*entry) + sizeof(*file) + name->len - 4,
                           log);
        if (entry == NULL) {
            return NGX_ERROR;
        }

        map->config_map[map->n_config_map++] = entry;

        file = (Opamp__Proto__V1__AgentConfigFile *) (entry + 1);

        opamp__proto__v1__agent_config_map__config_map_entry__init(entry);
        opamp__proto__v1__agent_config_file__init(file);

        entry->key = (char *) (file + 1);
        ngx_memcpy(entry->key, name->str + 5, name->len - 5);
        entry->value = file;

        file->body.data = (uint8_t *) value->str;
        file->body.len = value->len;

        /* its "type:<name>" field, wherever it is in the reply */

        for (j = 0; j < n; j++) {
            if (el[2 * j]->type == REDIS_REPLY_STRING
                && el[2 * j]->len == name->len
                && ngx_strncmp(el[2 * j]->str, "type:", 5) == 0
                && ngx_strncmp(el[2 * j]->str + 5, name->str + 5,
                               name->len - 5) == 0
                && el[2 * j + 1]->type == REDIS_REPLY_STRING
                && el[2 * j + 1]->len > 0)
            {
                file->content_type = ngx_alloc(el[2 * j + 1]->len + 1, log);
                if (file->content_type == NULL) {
                    file->content_type = (char *) protobuf_c_empty_string;
                    return NGX_ERROR;
                }

                ngx_memcpy(file->content_type, el[2 * j + 1]->str,
                           el[2 * j + 1]->len);
                file->content_type[el[2 * j + 1]->len] = '\0';
                break;
            }
        }
    }

    if (rep->owed_config_hash.len != 64
        || ngx_http_opamp_hex_decode(hash, rep->owed_config_hash.data, 64)
           != 0)
    {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "opamp: the config hash \"%V\" in redis is not 64 hex "
                      "digits", &rep->owed_config_hash);
        return NGX_ERROR;
    }

    arc->config_hash.data = hash;
    arc->config_hash.len = 32;

    return NGX_OK;
}


static void
ngx_http_opamp_session_free_remote_config(
    Opamp__Proto__V1__AgentRemoteConfig *arc)
{
    size_t                                             i;
    Opamp__Proto__V1__AgentConfigMap                  *map;
    Opamp__Proto__V1__AgentConfigMap__ConfigMapEntry  *entry;

    map = arc->config;

    if (map == NULL) {
        return;
    }

    for (i = 0; i < map->n_config_map; i++) {
        entry = map->config_map[i];

        if (entry->value->content_type != protobuf_c_empty_string) {
            ngx_free(entry->value->content_type);
        }

        ngx_free(entry);
    }

    ngx_free(map);
    arc->config = NULL;
}


/*
 * The connection settings and packages the script says the agent is owed.
 * The script (lib/owed.lua) passes the parts of the stored settings that
 * the agent's capabilities accept (the spec: offer only what the agent
 * declares it accepts); the module adds its heartbeat interval.  Both are
 * unpacked from the reply with protobuf-c; a value that does not decode
 * is logged and left out.
 */

static void
ngx_http_opamp_session_offers(ngx_http_opamp_session_t *s,
    ngx_http_opamp_report_t *rep, Opamp__Proto__V1__ServerToAgent *s2a,
    ngx_http_opamp_owed_t *o)
{
    uint64_t                                     caps;
    const char                                  *reason;
    Opamp__Proto__V1__ConnectionSettingsOffers  *st;

    opamp__proto__v1__connection_settings_offers__init(&o->cso);
    opamp__proto__v1__op_ampconnection_settings__init(&o->ocs);

    caps = s->capabilities;

    if (rep->packages.len) {
        o->packages = (Opamp__Proto__V1__PackagesAvailable *)
                      ngx_http_opamp_proto_unpack(
                          &opamp__proto__v1__packages_available__descriptor,
                          rep->packages.data, rep->packages.len, &reason);

        if (o->packages) {
            s2a->packages_available = o->packages;

        } else {
            ngx_log_error(NGX_LOG_ERR, s->connection->log, 0,
                          "opamp: the packages offer in redis is not a "
                          "PackagesAvailable message");
        }
    }

    if (!rep->offer_conn_settings || rep->settings_hash.len != 40
        || ngx_http_opamp_hex_decode(o->hash, rep->settings_hash.data, 40)
           != 0)
    {
        return;
    }

    if (rep->settings_extra.len) {
        o->stored = (Opamp__Proto__V1__ConnectionSettingsOffers *)
                    ngx_http_opamp_proto_unpack(
                        &opamp__proto__v1__connection_settings_offers__descriptor,
                        rep->settings_extra.data, rep->settings_extra.len,
                        &reason);

        if (o->stored == NULL) {
            ngx_log_error(NGX_LOG_ERR, s->connection->log, 0,
                          "opamp: the connection settings in redis are not "
                          "a ConnectionSettingsOffers message");
            return;
        }
    }

    st = o->stored;

    /*
     * The script passed the parts the agent's capabilities accept, the
     * opamp part only with a destination_endpoint: an agent that accepts
     * OpAMP settings gets the heartbeat interval in the operator's opamp
     * part, or not at all (an opamp part without an endpoint is refused
     * by the spec and by the supervisor).  An agent that reports
     * heartbeats and accepts no OpAMP settings is told the interval in
     * an opamp part of its own: the spec's way to tell it, and opamp-go
     * reads nothing else of it for such an agent.
     */

    if (st && st->opamp) {
        o->cso.opamp = st->opamp;

        /* where agents have tokens the script made the token of this
         * message the agent's next one, as the opamp part goes out: it
         * travels in it, or the part does not go at all, as an agent that
         * took it without would be shut out (docs/security.md) */

        if (rep->token_mint.len) {
            if (ngx_http_opamp_session_token_headers(s, rep, o) != NGX_OK) {
                return;
            }

            o->cso.opamp = &o->ocs;
        }

        ngx_http_opamp_session_conn_settings(s, o->cso.opamp);

    } else if ((caps & NGX_HTTP_OPAMP_ACAP_REPORTS_HEARTBEAT)
               && !(caps & NGX_HTTP_OPAMP_ACAP_ACCEPTS_OPAMP_SETTINGS))
    {
        o->cso.opamp = &o->ocs;
        ngx_http_opamp_session_conn_settings(s, o->cso.opamp);
    }

    if (st) {
        o->cso.own_traces = st->own_traces;
        o->cso.own_metrics = st->own_metrics;
        o->cso.own_logs = st->own_logs;
        o->cso.n_other_connections = st->n_other_connections;
        o->cso.other_connections = st->other_connections;
    }

    o->cso.hash.data = o->hash;
    o->cso.hash.len = sizeof(o->hash);

    s2a->connection_settings = &o->cso;
}


/*
 * The operator's opamp part with the agent's new token in it: a copy of
 * the part in o->ocs, its headers the operator's but for any
 * Authorization, then "Authorization: Bearer <token>".  The supervisor
 * replaces all of its headers with an offer's, so the operator's others
 * (a tenant header) stay, and the part keeps its CA certificate.
 */

static ngx_int_t
ngx_http_opamp_session_token_headers(ngx_http_opamp_session_t *s,
    ngx_http_opamp_report_t *rep, ngx_http_opamp_owed_t *o)
{
    size_t                      i, n;
    Opamp__Proto__V1__Header  **h;
    Opamp__Proto__V1__Headers  *theirs;

    o->ocs = *o->stored->opamp;

    theirs = o->ocs.headers;
    n = theirs ? theirs->n_headers : 0;

    o->header_list = ngx_alloc((n + 1) * sizeof(Opamp__Proto__V1__Header *),
                               s->connection->log);
    if (o->header_list == NULL) {
        return NGX_ERROR;
    }

    opamp__proto__v1__headers__init(&o->headers);
    opamp__proto__v1__header__init(&o->auth);

    h = o->header_list;

    for (i = 0; i < n; i++) {
        if (theirs->headers[i]->key
            && ngx_strcasecmp((u_char *) theirs->headers[i]->key,
                              (u_char *) "Authorization") == 0)
        {
            continue;
        }

        *h++ = theirs->headers[i];
    }

    *ngx_cpymem(ngx_cpymem(o->bearer, "Bearer ", sizeof("Bearer ") - 1),
                rep->token, sizeof(rep->token)) = '\0';

    o->auth.key = "Authorization";
    o->auth.value = (char *) o->bearer;
    *h++ = &o->auth;

    o->headers.headers = o->header_list;
    o->headers.n_headers = h - o->header_list;
    o->ocs.headers = &o->headers;

    return NGX_OK;
}


/* fills s2a with everything the agent is owed; free_owed() afterwards,
 * whatever this returns */

ngx_int_t
ngx_http_opamp_session_owed(ngx_http_opamp_session_t *s,
    ngx_http_opamp_report_t *rep, Opamp__Proto__V1__ServerToAgent *s2a,
    ngx_http_opamp_owed_t *o)
{
    ngx_memzero(o, sizeof(ngx_http_opamp_owed_t));
    opamp__proto__v1__agent_remote_config__init(&o->arc);
    opamp__proto__v1__server_to_agent_command__init(&o->cmd);
    opamp__proto__v1__custom_message__init(&o->cm);

    ngx_http_opamp_session_offers(s, rep, s2a, o);
    ngx_http_opamp_session_extras(rep, s2a, o);

    if (rep->owed_config == NULL) {
        return NGX_OK;
    }

    if (ngx_http_opamp_session_remote_config(rep, &o->arc, o->config_hash,
                                             s->connection->log)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    s2a->remote_config = &o->arc;

    return NGX_OK;
}


/*
 * The ServerToAgent of a fleet change for all agents owed one config
 * (src/ngx_http_opamp_fanout.c): its capabilities and remote_config,
 * packed without an instance_uid, which each copy gets in front.  files
 * and hash (hex) are of the config's hash in Redis; o is freed by the
 * caller whatever this returns, out.data when it returns NGX_OK.
 */

ngx_int_t
ngx_http_opamp_session_config_message(redisReply *files, ngx_str_t *hash,
    ngx_http_opamp_owed_t *o, Opamp__Proto__V1__ServerToAgent *s2a,
    ngx_str_t *out, ngx_log_t *log)
{
    ngx_http_opamp_report_t  rep;

    ngx_memzero(o, sizeof(ngx_http_opamp_owed_t));
    opamp__proto__v1__agent_remote_config__init(&o->arc);
    opamp__proto__v1__server_to_agent__init(s2a);

    ngx_memzero(&rep, sizeof(ngx_http_opamp_report_t));
    rep.owed_config = files;
    rep.owed_config_hash = *hash;

    if (ngx_http_opamp_session_remote_config(&rep, &o->arc, o->config_hash,
                                             log)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    s2a->capabilities = NGX_HTTP_OPAMP_SERVER_CAPABILITIES;
    s2a->remote_config = &o->arc;

    return ngx_http_opamp_proto_pack((ProtobufCMessage *) s2a, out, log);
}


void
ngx_http_opamp_session_free_owed(ngx_http_opamp_owed_t *o)
{
    ngx_http_opamp_session_free_remote_config(&o->arc);

    if (o->header_list) {
        ngx_free(o->header_list);
    }

    if (o->stored) {
        opamp__proto__v1__connection_settings_offers__free_unpacked(
            o->stored, NULL);
    }

    if (o->packages) {
        opamp__proto__v1__packages_available__free_unpacked(o->packages,
                                                            NULL);
    }
}


/* the command and the custom message the script says the agent is owed;
 * they point into the Redis reply, whose strings hiredis NUL-terminates */

static void
ngx_http_opamp_session_extras(ngx_http_opamp_report_t *rep,
    Opamp__Proto__V1__ServerToAgent *s2a, ngx_http_opamp_owed_t *o)
{
    redisReply                             **el;
    Opamp__Proto__V1__CustomMessage         *cm;
    Opamp__Proto__V1__ServerToAgentCommand  *cmd;

    cm = &o->cm;
    cmd = &o->cmd;

    if (rep->command.len == sizeof("restart") - 1
        && ngx_strncmp(rep->command.data, "restart", 7) == 0)
    {
        cmd->type = OPAMP__PROTO__V1__COMMAND_TYPE__CommandType_Restart;
        s2a->command = cmd;
    }

    if (rep->owed_message) {
        el = rep->owed_message->element;

        if (el[0]->type == REDIS_REPLY_STRING
            && el[1]->type == REDIS_REPLY_STRING
            && el[2]->type == REDIS_REPLY_STRING)
        {
            cm->capability = el[0]->str;
            cm->type = el[1]->str;
            cm->data.data = (uint8_t *) el[2]->str;
            cm->data.len = el[2]->len;
            s2a->custom_message = cm;
        }
    }
}
