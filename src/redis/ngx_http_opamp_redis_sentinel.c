/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Redis Sentinel: which server is the primary.  The Sentinel link asks
 * one Sentinel after another for the primary's address and stays
 * subscribed to +switch-master, so that every worker moves its links to
 * a new primary without a reload; a link to the primary checks with ROLE
 * that the server it reached is still the primary, since a Sentinel's
 * answer can be stale.
 */


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_metrics.h"
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_redis_link.h"
#include "ngx_http_opamp_redis_connect.h"
#include "ngx_http_opamp_redis_sentinel.h"


static void ngx_http_opamp_redis_set_primary(u_char *host, size_t len,
    ngx_int_t port, const char *how);


/* the server a Sentinel named must still be the primary */

void
ngx_http_opamp_redis_role_reply(redisReply *reply, void *data)
{
    ngx_http_opamp_redis_link_t *link = data;

    redisReply  *role;

    if (ngx_http_opamp_redis_hello_step(link, reply, "ROLE") != NGX_OK) {
        return;
    }

    role = (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0)
           ? reply->element[0] : NULL;

    if (role == NULL || role->type != REDIS_REPLY_STRING
        || role->len != 6 || ngx_strncmp(role->str, "master", 6) != 0)
    {
        ngx_snprintf(link->why, sizeof(link->why) - 1,
                     "%V is not the primary (its role is \"%*s\"); asking "
                     "the Sentinels again%Z", &link->addr,
                     (size_t) (role && role->type == REDIS_REPLY_STRING
                               ? role->len : 0),
                     role && role->type == REDIS_REPLY_STRING
                     ? role->str : "");

        ngx_http_opamp_redis_primary.known = 0;
        ngx_http_opamp_redis_drop(link, (char *) link->why);
        return;
    }

    if (--link->handshake == 0) {
        ngx_http_opamp_redis_up(link);
    }
}


void
ngx_http_opamp_redis_master_reply(redisReply *reply, void *data)
{
    ngx_http_opamp_redis_link_t *link = data;

    ngx_int_t     port;
    redisReply  **el;
    const char   *argv[2];
    size_t        argvlen[2];

    if (ngx_http_opamp_redis_hello_step(link, reply,
                                        "SENTINEL get-master-addr-by-name")
        != NGX_OK)
    {
        return;
    }

    el = reply->element;

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2
        || el[0]->type != REDIS_REPLY_STRING
        || el[1]->type != REDIS_REPLY_STRING
        || el[0]->len == 0 || el[0]->len > NGX_HTTP_OPAMP_REDIS_HOST_LEN
        || (port = ngx_atoi((u_char *) el[1]->str, el[1]->len)) < 1
        || port > 65535)
    {
        ngx_snprintf(link->why, sizeof(link->why) - 1,
                     "the Sentinel does not know the master \"%V\"%Z",
                     &ngx_http_opamp_redis_conf->redis.master_name);

        /* another Sentinel may know it */
        ngx_http_opamp_redis_next_sentinel++;
        ngx_http_opamp_redis_drop(link, (char *) link->why);
        return;
    }

    ngx_http_opamp_redis_set_primary((u_char *) el[0]->str, el[0]->len,
                                     port, "named by a Sentinel");

    argv[0] = "SUBSCRIBE";
    argvlen[0] = 9;
    argv[1] = "+switch-master";
    argvlen[1] = 14;

    if (ngx_http_opamp_redis_append(link, 2, argv, argvlen) != NGX_OK) {
        ngx_http_opamp_redis_drop(link, "no memory");
        return;
    }

    ngx_http_opamp_redis_post_write(link);

    if (--link->handshake == 0) {
        ngx_http_opamp_redis_up(link);
    }
}


/* "<master name> <old ip> <old port> <new ip> <new port>" */

void
ngx_http_opamp_redis_switch_master(ngx_str_t *payload)
{
    u_char      *p, *last, *field[5];
    size_t       len[5];
    ngx_int_t    port;
    ngx_uint_t   n;
    ngx_str_t   *name;

    p = payload->data;
    last = p + payload->len;

    for (n = 0; n < 5 && p < last; n++) {
        field[n] = p;

        while (p < last && *p != ' ') {
            p++;
        }

        len[n] = p - field[n];

        while (p < last && *p == ' ') {
            p++;
        }
    }

    name = &ngx_http_opamp_redis_conf->redis.master_name;

    if (n != 5 || len[0] != name->len
        || ngx_strncmp(field[0], name->data, name->len) != 0)
    {
        return;
    }

    port = ngx_atoi(field[4], len[4]);

    if (port < 1 || port > 65535 || len[3] == 0
        || len[3] > NGX_HTTP_OPAMP_REDIS_HOST_LEN)
    {
        return;
    }

    ngx_http_opamp_redis_set_primary(field[3], len[3], port,
                                     "after a failover (+switch-master)");
}


/*
 * The Sentinels named the primary: links that waited for it connect now,
 * and when it moved, links to the old one move to it at once.
 */

static void
ngx_http_opamp_redis_set_primary(u_char *host, size_t len, ngx_int_t port,
    const char *how)
{
    ngx_uint_t                       i, changed, level;
    ngx_http_opamp_redis_link_t     *link;
    ngx_http_opamp_redis_primary_t  *pr;

    pr = &ngx_http_opamp_redis_primary;

    changed = (pr->host.len != len
               || ngx_strncmp(pr->buf, host, len) != 0
               || pr->port != (in_port_t) port);

    if (changed) {
        level = pr->host.len ? NGX_LOG_NOTICE : NGX_LOG_INFO;

        if (pr->host.len) {
            /* a primary known before: the fleet's Redis failed over */
            ngx_http_opamp_metrics_inc(NGX_HTTP_OPAMP_M_REDIS_FAILOVERS);
        }

        ngx_log_error(level, ngx_http_opamp_redis_log, 0,
                      "opamp: redis primary of \"%V\" is %*s:%i (%s)",
                      &ngx_http_opamp_redis_conf->redis.master_name,
                      len, host, port, how);
    }

    ngx_memcpy(pr->buf, host, len);
    pr->buf[len] = '\0';
    pr->host.data = pr->buf;
    pr->host.len = len;
    pr->port = (in_port_t) port;
    pr->known = 1;

    for (i = 0; i < NGX_HTTP_OPAMP_REDIS_SENTINEL; i++) {
        link = &ngx_http_opamp_redis_links[i];

        if (i == NGX_HTTP_OPAMP_REDIS_WAIT
            && !ngx_http_opamp_redis_conf->wait_replicas)
        {
            continue;
        }

        if (link->state == NGX_HTTP_OPAMP_REDIS_DOWN) {
            if (changed) {
                link->backoff = NGX_HTTP_OPAMP_REDIS_BACKOFF_MIN;
            }

            if (link->waiting || (changed && link->reconnect.timer_set)) {
                ngx_http_opamp_redis_connect(link);
            }

            continue;
        }

        if (changed) {
            ngx_http_opamp_redis_move(link);
        }
    }
}


/*
 * Ask the Sentinels again, after a link to the primary failed or was
 * told READONLY: the Sentinel link reconnects and asks, unless a
 * question is on its way or a retry is already scheduled.
 */

void
ngx_http_opamp_redis_sentinel_ask(void)
{
    ngx_http_opamp_redis_link_t  *link;

    if (!ngx_http_opamp_redis_sentinel_mode() || ngx_http_opamp_redis_exiting)
    {
        return;
    }

    link = &ngx_http_opamp_redis_sentinel_link;

    if (link->state == NGX_HTTP_OPAMP_REDIS_READY) {
        ngx_http_opamp_redis_close(link);
        ngx_http_opamp_redis_connect(link);
        return;
    }

    if (link->state == NGX_HTTP_OPAMP_REDIS_DOWN
        && !link->reconnect.timer_set)
    {
        ngx_http_opamp_redis_connect(link);
    }
}


