/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * How a Redis link connects: where to (the opamp_redis address or unix
 * socket, one Sentinel after another, or the primary the Sentinels
 * named), a name through nginx's resolver on every attempt (so that an
 * address that moves is followed), then a non-blocking socket and
 * connect() of our own on an nginx connection.  Once connected the link
 * goes on with TLS (ngx_http_opamp_redis_ssl.c) or the Redis handshake
 * (ngx_http_opamp_redis.c).
 */


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_redis_link.h"
#include "ngx_http_opamp_redis_connect.h"
#include "ngx_http_opamp_redis_sentinel.h"
#include "ngx_http_opamp_redis_ssl.h"


static ngx_int_t ngx_http_opamp_redis_target(
    ngx_http_opamp_redis_link_t *link, ngx_http_opamp_redis_url_t **url);
static ngx_int_t ngx_http_opamp_redis_literal(
    ngx_http_opamp_redis_link_t *link);
static void ngx_http_opamp_redis_resolved(ngx_resolver_ctx_t *ctx);
static void ngx_http_opamp_redis_connect_addr(
    ngx_http_opamp_redis_link_t *link);


void
ngx_http_opamp_redis_connect(ngx_http_opamp_redis_link_t *link)
{
    ngx_int_t                    rc;
    ngx_resolver_ctx_t          *ctx;
    ngx_http_opamp_redis_url_t  *url;

    if (ngx_http_opamp_redis_exiting
        || link->state != NGX_HTTP_OPAMP_REDIS_DOWN)
    {
        return;
    }

    if (link->reconnect.timer_set) {
        ngx_del_timer(&link->reconnect);
    }

    link->waiting = 0;

    rc = ngx_http_opamp_redis_target(link, &url);

    if (rc == NGX_DECLINED) {
        /* no primary known yet: the Sentinel link connects this one */
        link->waiting = 1;
        ngx_http_opamp_redis_sentinel_ask();
        return;
    }

    if (link->timer.timer_set) {
        ngx_del_timer(&link->timer);
    }

    ngx_add_timer(&link->timer, ngx_http_opamp_redis_conf->redis_timeout);

    if (rc == NGX_OK) {
        /* an address, or a unix socket */
        link->state = NGX_HTTP_OPAMP_REDIS_CONNECTING;
        ngx_http_opamp_redis_connect_addr(link);
        return;
    }

    /* a name: nginx's resolver each time, so that an address that moves
     * is followed; without one, the addresses found when nginx started */

    if (ngx_http_opamp_redis_conf->resolver) {
        ctx = ngx_resolve_start(ngx_http_opamp_redis_conf->resolver, NULL);

        if (ctx == NULL) {
            link->state = NGX_HTTP_OPAMP_REDIS_RESOLVING;
            ngx_http_opamp_redis_drop(link, "no memory");
            return;
        }

        if (ctx != NGX_NO_RESOLVER) {
            ctx->name = link->host;
            ctx->handler = ngx_http_opamp_redis_resolved;
            ctx->data = link;
            ctx->timeout = ngx_http_opamp_redis_conf->resolver_timeout;
            ctx->cancelable = 1;

            link->state = NGX_HTTP_OPAMP_REDIS_RESOLVING;
            link->resolving = ctx;

            if (ngx_resolve_name(ctx) != NGX_OK) {
                /* the resolver freed the context */
                link->resolving = NULL;
                ngx_http_opamp_redis_drop(link, "resolver error");
            }

            return;
        }
    }

    link->state = NGX_HTTP_OPAMP_REDIS_CONNECTING;

    if (url == NULL || url->naddrs == 0) {
        ngx_snprintf(link->why, sizeof(link->why) - 1,
                     "\"%V\" is a host name and no resolver is "
                     "configured%Z", &link->host);
        ngx_http_opamp_redis_drop(link, (char *) link->why);
        return;
    }

    ngx_memcpy(&link->sockaddr,
               url->addrs[link->next_addr % url->naddrs].sockaddr,
               url->addrs[link->next_addr % url->naddrs].socklen);
    link->socklen = url->addrs[link->next_addr % url->naddrs].socklen;
    link->next_addr++;

    ngx_http_opamp_redis_connect_addr(link);
}


/*
 * Where the link connects to: NGX_OK with link->sockaddr set (an address
 * or a unix socket), NGX_AGAIN with link->host a name to resolve (url is
 * then the configured one, or NULL for a primary named by a Sentinel),
 * NGX_DECLINED when the Sentinels have not named the primary yet.
 */

static ngx_int_t
ngx_http_opamp_redis_target(ngx_http_opamp_redis_link_t *link,
    ngx_http_opamp_redis_url_t **url)
{
    size_t                       len;
    struct sockaddr_un          *sun;
    ngx_http_opamp_redis_url_t  *u, *sentinels;

    u = &ngx_http_opamp_redis_conf->redis;
    *url = NULL;

    if (u->unix_path.len) {
        sun = &link->sockaddr.sockaddr_un;
        ngx_memzero(sun, sizeof(struct sockaddr_un));
        sun->sun_family = AF_UNIX;

        len = ngx_min(u->unix_path.len, sizeof(sun->sun_path) - 1);
        ngx_memcpy(sun->sun_path, u->unix_path.data, len);

        link->socklen = sizeof(struct sockaddr_un);
        link->host = u->unix_path;
        link->port = 0;
        link->addr = link->host;

        return NGX_OK;
    }

    if (link->kind == NGX_HTTP_OPAMP_REDIS_SENTINEL) {
        sentinels = u->sentinels->elts;
        u = &sentinels[ngx_http_opamp_redis_next_sentinel
                       % u->sentinels->nelts];

    } else if (u->sentinels) {
        if (!ngx_http_opamp_redis_primary.known) {
            return NGX_DECLINED;
        }

        link->host.len = ngx_http_opamp_redis_primary.host.len;
        link->host.data = link->host_buf;
        ngx_memcpy(link->host_buf, ngx_http_opamp_redis_primary.host.data,
                   link->host.len);
        link->host_buf[link->host.len] = '\0';
        link->port = ngx_http_opamp_redis_primary.port;
        link->addr = link->host;

        return ngx_http_opamp_redis_literal(link);
    }

    *url = u;

    link->host.len = ngx_min(u->host.len, NGX_HTTP_OPAMP_REDIS_HOST_LEN);
    link->host.data = link->host_buf;
    ngx_memcpy(link->host_buf, u->host.data, link->host.len);
    link->host_buf[link->host.len] = '\0';
    link->port = (in_port_t) u->port;
    link->addr = link->host;

    return ngx_http_opamp_redis_literal(link);
}


/* an address in link->host goes to link->sockaddr as it is */

static ngx_int_t
ngx_http_opamp_redis_literal(ngx_http_opamp_redis_link_t *link)
{
    in_addr_t             inaddr;
    struct sockaddr_in   *sin;
#if (NGX_HAVE_INET6)
    u_char                inaddr6[16];
    struct sockaddr_in6  *sin6;
#endif

    inaddr = ngx_inet_addr(link->host.data, link->host.len);

    if (inaddr != INADDR_NONE) {
        sin = &link->sockaddr.sockaddr_in;
        ngx_memzero(sin, sizeof(struct sockaddr_in));
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = inaddr;
        sin->sin_port = htons(link->port);
        link->socklen = sizeof(struct sockaddr_in);
        return NGX_OK;
    }

#if (NGX_HAVE_INET6)
    if (ngx_inet6_addr(link->host.data, link->host.len, inaddr6) == NGX_OK) {
        sin6 = &link->sockaddr.sockaddr_in6;
        ngx_memzero(sin6, sizeof(struct sockaddr_in6));
        sin6->sin6_family = AF_INET6;
        ngx_memcpy(sin6->sin6_addr.s6_addr, inaddr6, 16);
        sin6->sin6_port = htons(link->port);
        link->socklen = sizeof(struct sockaddr_in6);
        return NGX_OK;
    }
#endif

    return NGX_AGAIN;
}


static void
ngx_http_opamp_redis_resolved(ngx_resolver_ctx_t *ctx)
{
    ngx_http_opamp_redis_link_t *link = ctx->data;

    ngx_uint_t  i;

    link->resolving = NULL;

    if (ctx->state) {
        ngx_snprintf(link->why, sizeof(link->why) - 1,
                     "\"%V\" could not be resolved (%i: %s)%Z",
                     &ctx->name, ctx->state,
                     ngx_resolver_strerror(ctx->state));
        ngx_resolve_name_done(ctx);
        ngx_http_opamp_redis_drop(link, (char *) link->why);
        return;
    }

    i = link->next_addr++ % ctx->naddrs;

    ngx_memcpy(&link->sockaddr, ctx->addrs[i].sockaddr,
               ctx->addrs[i].socklen);
    link->socklen = ctx->addrs[i].socklen;
    ngx_inet_set_port(&link->sockaddr.sockaddr, link->port);

    ngx_resolve_name_done(ctx);

    link->state = NGX_HTTP_OPAMP_REDIS_CONNECTING;
    ngx_http_opamp_redis_connect_addr(link);
}


/*
 * The socket and connect() of our own rather than ngx_event_connect_peer():
 * a refused connection is then one line per outage, not one per retry.
 */

static void
ngx_http_opamp_redis_connect_addr(ngx_http_opamp_redis_link_t *link)
{
    int                rc, on;
    ngx_err_t          err;
    ngx_socket_t       s;
    ngx_connection_t  *c;

    link->addr.data = link->addr_buf;
    link->addr.len = ngx_sock_ntop(&link->sockaddr.sockaddr, link->socklen,
                                   link->addr_buf, NGX_SOCKADDR_STRLEN, 1);

    s = ngx_socket(link->sockaddr.sockaddr.sa_family, SOCK_STREAM, 0);

    if (s == (ngx_socket_t) -1) {
        err = ngx_socket_errno;
        *ngx_strerror(err, link->why, sizeof(link->why) - 1) = '\0';
        ngx_http_opamp_redis_drop(link, (char *) link->why);
        return;
    }

    c = ngx_get_connection(s, &link->log);
    if (c == NULL) {
        (void) ngx_close_socket(s);
        ngx_http_opamp_redis_drop(link, "no free nginx connection");
        return;
    }

    link->conn = c;
    link->gen++;

    c->data = link;
    c->type = SOCK_STREAM;
    c->log_error = NGX_ERROR_INFO;
    c->recv = ngx_recv;
    c->send = ngx_send;
    c->recv_chain = ngx_recv_chain;
    c->send_chain = ngx_send_chain;
    c->read->handler = ngx_http_opamp_redis_read_handler;
    c->write->handler = ngx_http_opamp_redis_write_handler;
    c->read->log = c->log;
    c->write->log = c->log;
    c->number = ngx_atomic_fetch_add(ngx_connection_counter, 1);

    if (ngx_nonblocking(s) == -1) {
        ngx_http_opamp_redis_drop(link, "fcntl(O_NONBLOCK) failed");
        return;
    }

    if (link->sockaddr.sockaddr.sa_family != AF_UNIX) {
        /* a half-open link would otherwise go unnoticed on pub/sub */
        on = 1;
        (void) setsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(int));
        (void) setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(int));
    }

    link->log.action = "connecting to redis";

    rc = connect(s, &link->sockaddr.sockaddr, link->socklen);

    if (rc == -1) {
        err = ngx_socket_errno;

        if (err != NGX_EINPROGRESS && err != NGX_EAGAIN) {
            *ngx_strerror(err, link->why, sizeof(link->why) - 1) = '\0';
            ngx_http_opamp_redis_drop(link, (char *) link->why);
            return;
        }
    }

    /* edge-triggered, both directions, for the life of the connection */

    if (ngx_add_conn) {
        if (ngx_add_conn(c) == NGX_ERROR) {
            ngx_http_opamp_redis_drop(link, "epoll_ctl() failed");
            return;
        }

    } else {
        if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_CLEAR_EVENT) != NGX_OK
            || ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_CLEAR_EVENT)
               != NGX_OK)
        {
            ngx_http_opamp_redis_drop(link, "event not added");
            return;
        }
    }

    if (rc == 0) {
        /* a unix socket connects at once */
        c->write->ready = 1;
        ngx_http_opamp_redis_connect_done(link);
    }
}


void
ngx_http_opamp_redis_connect_done(ngx_http_opamp_redis_link_t *link)
{
    int         err;
    socklen_t   len;

    err = 0;
    len = sizeof(int);

    if (getsockopt(link->conn->fd, SOL_SOCKET, SO_ERROR, (void *) &err, &len)
        == -1)
    {
        err = ngx_socket_errno;
    }

    if (err) {
        *ngx_strerror(err, link->why, sizeof(link->why) - 1) = '\0';
        ngx_http_opamp_redis_drop(link, (char *) link->why);
        return;
    }

    link->conn->write->ready = 1;

#if (NGX_SSL)
    if (ngx_http_opamp_redis_conf->ssl_ctx) {
        ngx_http_opamp_redis_tls_start(link);
        return;
    }
#endif

    ngx_http_opamp_redis_hello(link);
}
