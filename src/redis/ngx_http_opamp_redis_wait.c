/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * opamp_redis_wait: after a write of operator data (the admin API), WAIT
 * for the replicas to acknowledge it, on the wait link when it is up and
 * on the command link otherwise, and the answer to give when they did
 * not.  The wait link itself is connected with the others in
 * ngx_http_opamp_redis.c; the directive is read in
 * ngx_http_opamp_redis_conf.c.
 */


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_redis_link.h"
#include "ngx_http_opamp_redis_wait.h"


static redisReply *
ngx_http_opamp_redis_reply_copy(redisReply *reply)
{
    size_t       i;
    redisReply  *r;

    /* plain malloc, as hiredis 0.14 allocates: freeReplyObject() frees it */

    r = calloc(1, sizeof(redisReply));
    if (r == NULL) {
        return NULL;
    }

    r->type = reply->type;
    r->integer = reply->integer;

    if (reply->str) {
        r->str = malloc(reply->len + 1);
        if (r->str == NULL) {
            goto failed;
        }

        ngx_memcpy(r->str, reply->str, reply->len);
        r->str[reply->len] = '\0';
        r->len = reply->len;
    }

    if (reply->element) {
        r->element = calloc(reply->elements, sizeof(redisReply *));
        if (r->element == NULL) {
            goto failed;
        }

        r->elements = reply->elements;

        for (i = 0; i < reply->elements; i++) {
            r->element[i] = ngx_http_opamp_redis_reply_copy(reply->element[i]);
            if (r->element[i] == NULL) {
                goto failed;
            }
        }
    }

    return r;

failed:

    freeReplyObject(r);
    return NULL;
}


/*
 * WAIT waits for the replicas to acknowledge the replication offset of
 * the connection's own last write.  It goes on a link of its own, so that
 * the agents' commands on the command link never queue behind it: there
 * a PUBLISH to "<prefix>wait" (a channel nobody listens to, replicated
 * like every PUBLISH) comes first, and as the offset only grows, the
 * offset of that PUBLISH covers the admin write that the command link
 * has already seen answered.  Without the wait link (down), WAIT goes on
 * the command link itself, which then waits with it.
 */

ngx_int_t
ngx_http_opamp_redis_wait_send(redisReply *reply, redisReply **written,
    ngx_http_opamp_redis_handler_pt handler, void *data,
    ngx_http_opamp_redis_cmd_t **cmd)
{
    u_char                       n[NGX_INT_T_LEN], t[NGX_INT_T_LEN];
    u_char                       channel[64 + sizeof("wait")];
    size_t                       argvlen[3];
    const char                  *argv[3];
    ngx_http_opamp_redis_link_t  *link;

    if (ngx_http_opamp_redis_conf->wait_replicas == 0) {
        return NGX_DECLINED;
    }

    *written = ngx_http_opamp_redis_reply_copy(reply);
    if (*written == NULL) {
        return NGX_ERROR;
    }

    link = &ngx_http_opamp_redis_wait_link;

    if (link->state == NGX_HTTP_OPAMP_REDIS_READY) {
        argv[0] = "PUBLISH";
        argvlen[0] = 7;
        argv[1] = (const char *) channel;
        argvlen[1] = ngx_snprintf(channel, sizeof(channel), "%Vwait",
                                  &ngx_http_opamp_redis_conf->prefix)
                     - channel;
        argv[2] = "";
        argvlen[2] = 0;

        if (ngx_http_opamp_redis_send(link, 3, argv, argvlen, NULL, NULL)
            == NULL)
        {
            link = &ngx_http_opamp_redis_cmd_link;
        }

    } else {
        link = &ngx_http_opamp_redis_cmd_link;
    }

    argv[0] = "WAIT";
    argvlen[0] = 4;
    argv[1] = (const char *) n;
    argvlen[1] = ngx_sprintf(n, "%i", ngx_http_opamp_redis_conf->wait_replicas)
                 - n;
    argv[2] = (const char *) t;
    argvlen[2] = ngx_sprintf(t, "%M", ngx_http_opamp_redis_conf->wait_timeout)
                 - t;

    *cmd = NULL;

    if (link->state == NGX_HTTP_OPAMP_REDIS_READY) {
        *cmd = ngx_http_opamp_redis_send(link, 3, argv, argvlen, handler,
                                         data);
    }

    if (*cmd == NULL) {
        /* the written reply stays: the caller answers that it may not be
         * durable */
        return NGX_ERROR;
    }

    return NGX_AGAIN;
}


ngx_int_t
ngx_http_opamp_redis_wait_check(redisReply *reply, ngx_pool_t *pool,
    const char **reason)
{
    u_char     *p;
    size_t      len;
    long long   acked;

    if (reply && reply->type == REDIS_REPLY_INTEGER
        && reply->integer >= ngx_http_opamp_redis_conf->wait_replicas)
    {
        return NGX_OK;
    }

    acked = (reply && reply->type == REDIS_REPLY_INTEGER) ? reply->integer
                                                          : 0;

    len = sizeof("the write is on the Redis primary, but ") - 1
          + 2 * NGX_INT_T_LEN + NGX_INT_T_LEN
          + sizeof(" of  replicas confirmed it within  ms (opamp_redis_wait):"
                   " it may not be durable, a failover now could lose it;"
                   " check the replicas, then read it back or retry") + 16;

    p = ngx_pnalloc(pool, len);
    if (p == NULL) {
        *reason = "the write may not be durable";
        return NGX_HTTP_GATEWAY_TIME_OUT;
    }

    *reason = (const char *) p;

    ngx_snprintf(p, len - 1,
                 "the write is on the Redis primary, but %s%L of %i "
                 "replicas confirmed it within %M ms (opamp_redis_wait): it "
                 "may not be durable, a failover now could lose it; check "
                 "the replicas, then read it back or retry%Z",
                 reply ? "" : "no answer came and ",
                 acked, ngx_http_opamp_redis_conf->wait_replicas,
                 ngx_http_opamp_redis_conf->wait_timeout);

    return NGX_HTTP_GATEWAY_TIME_OUT;
}

