/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Who an agent is by what nginx verified, not by what it says: the
 * identity an instance uid is bound to (opamp_agent_identity) and the
 * attributes the server sets for it (opamp_agent_attribute), evaluated
 * once per request (a WebSocket's handshake, a plain HTTP poll) and
 * handed to the scripts with every report (docs/security.md).
 */

#ifndef _NGX_HTTP_OPAMP_IDENTITY_H_INCLUDED_
#define _NGX_HTTP_OPAMP_IDENTITY_H_INCLUDED_


#include "ngx_http_opamp.h"


/* the longest identity and server-set attribute value taken: a client
 * certificate's subject DN is rarely over a few hundred bytes */
#define NGX_HTTP_OPAMP_IDENTITY_MAX         1024
/* opamp_agent_attribute directives of one location at most */
#define NGX_HTTP_OPAMP_SERVER_ATTRS_MAX     16

#define NGX_HTTP_OPAMP_IDENTITY_REFUSE      0
#define NGX_HTTP_OPAMP_IDENTITY_NEW_UID     1


/* one opamp_agent_attribute */
typedef struct {
    ngx_str_t                       name;
    ngx_http_complex_value_t        value;
} ngx_http_opamp_server_attr_t;


/* one server-set attribute as evaluated */
typedef struct {
    ngx_str_t                       key;
    ngx_str_t                       value;
} ngx_http_opamp_identity_attr_t;


/* what nginx says of the agent behind one request; one allocation with
 * its bytes after it */
typedef struct {
    ngx_str_t                       identity;    /* empty: not configured */
    ngx_str_t                       attributes;  /* an AgentDescription of
                                                    identifying_attributes
                                                    (protobuf); empty:
                                                    none configured */
    ngx_str_t                       mark;        /* SHA1 of both, hex, for
                                                    the beat mark; empty
                                                    when neither */
    ngx_uint_t                      nattrs;
    ngx_http_opamp_identity_attr_t *attrs;
    size_t                          size;        /* of the block */
    u_char                          mark_hex[40];
} ngx_http_opamp_identity_t;


/* directives */
char *ngx_http_opamp_identity_attribute(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);

/*
 * Evaluates the location's identity and server-set attributes for r:
 * NGX_OK with *out (NULL when the location configures neither), one
 * block of (*out)->size bytes in r's pool; NGX_DECLINED with *reason
 * when the request must be refused (an empty or too long identity, an
 * attribute value that is no UTF-8 text); NGX_ERROR when out of memory.
 */
ngx_int_t ngx_http_opamp_identity_eval(ngx_http_request_t *r,
    ngx_http_opamp_identity_t **out, const char **reason);

/* id moved into buf (id->size bytes): a WebSocket's outlives its
 * request */
ngx_http_opamp_identity_t *ngx_http_opamp_identity_copy(
    ngx_http_opamp_identity_t *id, void *buf);


#endif /* _NGX_HTTP_OPAMP_IDENTITY_H_INCLUDED_ */
