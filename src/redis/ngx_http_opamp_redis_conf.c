/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The Redis configuration, at configuration time only: the URL of
 * opamp_redis (redis://, rediss://, sentinel://, unix:, host:port), its
 * defaults and resolver once the http block is read, and the directives
 * opamp_redis_sentinel_auth and opamp_redis_wait.
 */


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_redis_conf.h"
#include "ngx_http_opamp_redis_link.h"
#include "ngx_http_opamp_redis_ssl.h"


static char *ngx_http_opamp_redis_parse_unix(ngx_conf_t *cf,
    ngx_str_t *value, ngx_http_opamp_redis_url_t *url);
static char *ngx_http_opamp_redis_parse_tcp(ngx_conf_t *cf,
    ngx_str_t *value, ngx_http_opamp_redis_url_t *url);
static char *ngx_http_opamp_redis_parse_host(ngx_conf_t *cf,
    ngx_str_t *value, u_char *p, u_char *last, ngx_int_t port,
    ngx_http_opamp_redis_url_t *url);
static char *ngx_http_opamp_redis_resolve_conf(ngx_conf_t *cf,
    ngx_http_opamp_redis_url_t *url);
static char *ngx_http_opamp_redis_parse_db(ngx_conf_t *cf, ngx_str_t *value,
    u_char *start, u_char *end, ngx_http_opamp_redis_url_t *url);
static char *ngx_http_opamp_redis_check_max_reply(ngx_conf_t *cf,
    void *post, void *data);
static ngx_int_t ngx_http_opamp_redis_unescape(ngx_conf_t *cf, u_char *start,
    u_char *end, ngx_str_t *dst);


ngx_conf_post_handler_pt  ngx_http_opamp_redis_max_reply_post =
    ngx_http_opamp_redis_check_max_reply;


char *
ngx_http_opamp_redis_parse_url(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_opamp_redis_url_t *url)
{
    ngx_memzero(url, sizeof(ngx_http_opamp_redis_url_t));

    url->url = *value;

    if (value->len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "opamp: empty redis address");
        return NGX_CONF_ERROR;
    }

    if (value->len >= 5 && ngx_strncmp(value->data, "unix:", 5) == 0) {
        return ngx_http_opamp_redis_parse_unix(cf, value, url);
    }

    return ngx_http_opamp_redis_parse_tcp(cf, value, url);
}


static char *
ngx_http_opamp_redis_parse_unix(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_opamp_redis_url_t *url)
{
    u_char     *p, *last, *query, *arg, *amp, *eq;
    ngx_str_t   name;

    p = value->data + 5;
    last = value->data + value->len;

    query = ngx_strlchr(p, last, '?');
    if (query == NULL) {
        query = last;
    }

    if (query == p || *p != '/') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "opamp: invalid redis unix socket address \"%V\": "
                           "an absolute path is required", value);
        return NGX_CONF_ERROR;
    }

    if ((size_t) (query - p) >= sizeof(((struct sockaddr_un *) 0)->sun_path))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "opamp: invalid redis unix socket address \"%V\": "
                           "the path is too long", value);
        return NGX_CONF_ERROR;
    }

    url->unix_path.len = query - p;
    url->unix_path.data = ngx_pnalloc(cf->pool, url->unix_path.len + 1);
    if (url->unix_path.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(url->unix_path.data, p, url->unix_path.len);
    url->unix_path.data[url->unix_path.len] = '\0';

    for (arg = query + 1; arg < last; arg = amp + 1) {
        amp = ngx_strlchr(arg, last, '&');
        if (amp == NULL) {
            amp = last;
        }

        eq = ngx_strlchr(arg, amp, '=');
        if (eq == NULL) {
            goto invalid;
        }

        name.data = arg;
        name.len = eq - arg;

        if (name.len == 2 && ngx_strncmp(name.data, "db", 2) == 0) {
            if (ngx_http_opamp_redis_parse_db(cf, value, eq + 1, amp, url)
                != NGX_CONF_OK)
            {
                return NGX_CONF_ERROR;
            }

        } else if (name.len == 8
                   && ngx_strncmp(name.data, "password", 8) == 0)
        {
            if (ngx_http_opamp_redis_unescape(cf, eq + 1, amp, &url->password)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

        } else if (name.len == 4 && ngx_strncmp(name.data, "user", 4) == 0) {
            if (ngx_http_opamp_redis_unescape(cf, eq + 1, amp, &url->username)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

        } else {
            goto invalid;
        }
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "opamp: invalid redis unix socket address \"%V\": "
                       "only \"db\", \"user\" and \"password\" parameters "
                       "are known", value);
    return NGX_CONF_ERROR;
}


/*
 * "host:port", "redis://[[user]:password@]host[:port][/db]", the same
 * with "rediss://" for TLS, and
 * "sentinel://[[user]:password@]host[:port][,host[:port]...]/name[/db]".
 */

static char *
ngx_http_opamp_redis_parse_tcp(ngx_conf_t *cf, ngx_str_t *value,
    ngx_http_opamp_redis_url_t *url)
{
    u_char                      *p, *last, *at, *colon, *slash, *addr,
                                *comma, *name_end;
    ngx_uint_t                   sentinel;
    ngx_http_opamp_redis_url_t  *s;

    p = value->data;
    last = value->data + value->len;
    sentinel = 0;

    if (value->len >= 8 && ngx_strncmp(p, "redis://", 8) == 0) {
        p += 8;

    } else if (value->len >= 9 && ngx_strncmp(p, "rediss://", 9) == 0) {
        p += 9;
        url->ssl = 1;

    } else if (value->len >= 11 && ngx_strncmp(p, "sentinel://", 11) == 0) {
        p += 11;
        sentinel = 1;

    } else {
        if (ngx_strlchr(p, last, '/') || ngx_strlchr(p, last, '@')) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "opamp: invalid redis address \"%V\": use "
                               "\"host:port\", \"redis://[[user]:password@]"
                               "host[:port][/db]\", \"rediss://...\", "
                               "\"sentinel://[[user]:password@]host[:port]"
                               "[,host[:port]...]/master[/db]\" or "
                               "\"unix:/path\"", value);
            return NGX_CONF_ERROR;
        }

        return ngx_http_opamp_redis_parse_host(cf, value, p, last, 6379, url);
    }

    /* the path: the first "/" after the host */
    slash = ngx_strlchr(p, last, '/');

    at = NULL;
    for (addr = p; addr < (slash ? slash : last); addr++) {
        if (*addr == '@') {
            at = addr;     /* the last "@": passwords may contain "@" */
        }
    }

    if (at) {
        colon = ngx_strlchr(p, at, ':');

        if (colon) {
            if (ngx_http_opamp_redis_unescape(cf, p, colon, &url->username)
                != NGX_OK
                || ngx_http_opamp_redis_unescape(cf, colon + 1, at,
                                                 &url->password)
                   != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

        } else if (ngx_http_opamp_redis_unescape(cf, p, at, &url->password)
                   != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }

        p = at + 1;
    }

    if (!sentinel) {
        if (slash) {
            if (ngx_http_opamp_redis_parse_db(cf, value, slash + 1, last, url)
                != NGX_CONF_OK)
            {
                return NGX_CONF_ERROR;
            }

            last = slash;
        }

        return ngx_http_opamp_redis_parse_host(cf, value, p, last, 6379, url);
    }

    /* sentinel://: the master name is required, the database is not */

    if (slash == NULL || slash + 1 == last) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "opamp: no master name in redis address \"%V\": "
                           "use \"sentinel://host[:port][,host[:port]...]"
                           "/master[/db]\"", value);
        return NGX_CONF_ERROR;
    }

    name_end = ngx_strlchr(slash + 1, last, '/');

    if (name_end) {
        if (ngx_http_opamp_redis_parse_db(cf, value, name_end + 1, last, url)
            != NGX_CONF_OK)
        {
            return NGX_CONF_ERROR;
        }

    } else {
        name_end = last;
    }

    if (ngx_http_opamp_redis_unescape(cf, slash + 1, name_end,
                                      &url->master_name)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (url->master_name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "opamp: empty master name in redis address \"%V\"",
                           value);
        return NGX_CONF_ERROR;
    }

    url->sentinels = ngx_array_create(cf->pool, 3,
                                      sizeof(ngx_http_opamp_redis_url_t));
    if (url->sentinels == NULL) {
        return NGX_CONF_ERROR;
    }

    last = slash;

    for ( ;; ) {
        comma = ngx_strlchr(p, last, ',');
        if (comma == NULL) {
            comma = last;
        }

        s = ngx_array_push(url->sentinels);
        if (s == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memzero(s, sizeof(ngx_http_opamp_redis_url_t));
        s->url = *value;

        if (ngx_http_opamp_redis_parse_host(cf, value, p, comma, 26379, s)
            != NGX_CONF_OK)
        {
            return NGX_CONF_ERROR;
        }

        if (comma == last) {
            return NGX_CONF_OK;
        }

        p = comma + 1;
    }
}


/*
 * "host[:port]" without resolving: a name is resolved when the
 * configuration is complete and it is known whether a resolver is set.
 */

static char *
ngx_http_opamp_redis_parse_host(ngx_conf_t *cf, ngx_str_t *value, u_char *p,
    u_char *last, ngx_int_t port, ngx_http_opamp_redis_url_t *url)
{
    u_char     *host;
    ngx_url_t   u;

    if (p == last) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "opamp: no host in redis address \"%V\"", value);
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url.data = p;
    u.url.len = last - p;
    u.default_port = (in_port_t) port;
    u.no_resolve = 1;

    if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "opamp: invalid redis address \"%V\": %s",
                           value, u.err ? u.err : "cannot parse");
        return NGX_CONF_ERROR;
    }

    if (u.family == AF_UNIX || u.host.len == 0
        || u.host.len > NGX_HTTP_OPAMP_REDIS_HOST_LEN || u.uri.len)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "opamp: invalid redis address \"%V\"", value);
        return NGX_CONF_ERROR;
    }

    /* "[::1]" is "::1" */

    if (u.host.len > 2 && u.host.data[0] == '[') {
        u.host.data++;
        u.host.len -= 2;
    }

    host = ngx_pnalloc(cf->pool, u.host.len + 1);
    if (host == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(host, u.host.data, u.host.len);
    host[u.host.len] = '\0';

    url->host.data = host;
    url->host.len = u.host.len;
    url->port = u.port;

    url->name = (ngx_inet_addr(host, u.host.len) == INADDR_NONE);

#if (NGX_HAVE_INET6)
    if (url->name) {
        u_char  inaddr6[16];

        url->name = (ngx_inet6_addr(host, u.host.len, inaddr6) != NGX_OK);
    }
#endif

    return NGX_CONF_OK;
}


/* a name, resolved now as nginx does for upstream servers, when no
 * resolver is configured: getaddrinfo() would block a worker */

static char *
ngx_http_opamp_redis_resolve_conf(ngx_conf_t *cf,
    ngx_http_opamp_redis_url_t *url)
{
    ngx_url_t  u;

    if (!url->name) {
        return NGX_CONF_OK;
    }

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.host = url->host;
    u.port = (in_port_t) url->port;

    if (ngx_inet_resolve_host(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "opamp: invalid redis address \"%V\": host \"%V\" "
                           "not found (with \"resolver\" in the http block "
                           "it is resolved by the workers instead)",
                           &url->url, &url->host);
        return NGX_CONF_ERROR;
    }

    url->addrs = u.addrs;
    url->naddrs = u.naddrs;

    return NGX_CONF_OK;
}


static char *
ngx_http_opamp_redis_parse_db(ngx_conf_t *cf, ngx_str_t *value,
    u_char *start, u_char *end, ngx_http_opamp_redis_url_t *url)
{
    if (start == end) {
        return NGX_CONF_OK;
    }

    url->database = ngx_atoi(start, end - start);

    if (url->database == NGX_ERROR || url->database > 1000000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "opamp: invalid database number in redis address "
                           "\"%V\"", value);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* "%40" and the like in user names and passwords, as in any URL */

static ngx_int_t
ngx_http_opamp_redis_unescape(ngx_conf_t *cf, u_char *start, u_char *end,
    ngx_str_t *dst)
{
    u_char  *src, *d;

    dst->data = ngx_pnalloc(cf->pool, end - start + 1);
    if (dst->data == NULL) {
        return NGX_ERROR;
    }

    src = start;
    d = dst->data;

    ngx_unescape_uri(&d, &src, end - start, 0);

    dst->len = d - dst->data;
    dst->data[dst->len] = '\0';

    return NGX_OK;
}


void
ngx_http_opamp_redis_create_conf(ngx_http_opamp_main_conf_t *omcf)
{
    omcf->wait_replicas = NGX_CONF_UNSET;
    omcf->wait_timeout = NGX_CONF_UNSET_MSEC;
    omcf->redis_max_reply = NGX_CONF_UNSET_SIZE;
    omcf->ssl = NGX_CONF_UNSET;
    omcf->ssl_verify = NGX_CONF_UNSET;
    omcf->ssl_verify_depth = NGX_CONF_UNSET_UINT;
    omcf->ssl_server_name = NGX_CONF_UNSET;
}


/* the handshake's and the module's smallest replies fit in far less;
 * below this, ordinary admin listings would not */

static char *
ngx_http_opamp_redis_check_max_reply(ngx_conf_t *cf, void *post, void *data)
{
    size_t  *sp = data;

    if (*sp < 65536) {
        return "must be at least 64k";
    }

    return NGX_CONF_OK;
}


/* once the http block is read: defaults, the resolver, TLS */

char *
ngx_http_opamp_redis_init_conf(ngx_conf_t *cf,
    ngx_http_opamp_main_conf_t *omcf)
{
    ngx_uint_t                   i;
    ngx_http_core_loc_conf_t    *clcf;
    ngx_http_opamp_redis_url_t  *s;

    if (omcf->wait_replicas == NGX_CONF_UNSET) {
        omcf->wait_replicas = 0;
    }

    ngx_conf_init_msec_value(omcf->wait_timeout, 0);
    ngx_conf_init_value(omcf->ssl, 0);
    ngx_conf_init_value(omcf->ssl_verify, 0);
    ngx_conf_init_uint_value(omcf->ssl_verify_depth, 1);
    ngx_conf_init_value(omcf->ssl_server_name, 0);

    if (omcf->ssl_protocols == 0) {
        omcf->ssl_protocols = NGX_CONF_BITMASK_SET
#if (NGX_SSL)
                              |NGX_SSL_TLSv1_2|NGX_SSL_TLSv1_3
#endif
                              ;
    }

    if (omcf->ssl_ciphers.data == NULL) {
        ngx_str_set(&omcf->ssl_ciphers, "DEFAULT");
    }

    if (omcf->wait_replicas && omcf->wait_timeout >= omcf->redis_timeout) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"opamp_redis_wait\" timeout %M must be shorter "
                           "than \"opamp_redis_timeout\" %M: the command "
                           "link waits with it",
                           omcf->wait_timeout, omcf->redis_timeout);
        return NGX_CONF_ERROR;
    }

    if (omcf->redis.ssl) {
        omcf->ssl = 1;
    }

    if (omcf->redis.unix_path.len) {
        omcf->ssl = 0;
    }

    /* the resolver of the http block, where the opamp_redis directive is */

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    omcf->resolver = NULL;

    if (clcf->resolver && clcf->resolver->connections.nelts) {
        omcf->resolver = clcf->resolver;
        omcf->resolver_timeout = (clcf->resolver_timeout
                                  == NGX_CONF_UNSET_MSEC)
                                 ? 30000 : clcf->resolver_timeout;
    }

    if (omcf->resolver == NULL) {
        if (omcf->redis.unix_path.len == 0
            && ngx_http_opamp_redis_resolve_conf(cf, &omcf->redis)
               != NGX_CONF_OK)
        {
            return NGX_CONF_ERROR;
        }

        if (omcf->redis.sentinels) {
            s = omcf->redis.sentinels->elts;

            for (i = 0; i < omcf->redis.sentinels->nelts; i++) {
                if (ngx_http_opamp_redis_resolve_conf(cf, &s[i])
                    != NGX_CONF_OK)
                {
                    return NGX_CONF_ERROR;
                }
            }
        }
    }

    if (!omcf->ssl) {
        return NGX_CONF_OK;
    }

#if (NGX_SSL)
    return ngx_http_opamp_redis_ssl_conf(cf, omcf);
#else
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "opamp: TLS to redis needs nginx built with "
                       "--with-http_ssl_module");
    return NGX_CONF_ERROR;
#endif
}


/* opamp_redis_sentinel_auth [user] password */

char *
ngx_http_opamp_redis_sentinel_auth(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_opamp_main_conf_t *omcf = conf;

    ngx_str_t  *value;

    if (omcf->sentinel_password.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 3) {
        omcf->sentinel_username = value[1];
        omcf->sentinel_password = value[2];

    } else {
        omcf->sentinel_password = value[1];
    }

    if (omcf->sentinel_password.len == 0) {
        return "has an empty password";
    }

    return NGX_CONF_OK;
}


/* opamp_redis_wait <replicas> <timeout> | off */

char *
ngx_http_opamp_redis_wait(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_opamp_main_conf_t *omcf = conf;

    ngx_str_t  *value;

    if (omcf->wait_replicas != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 2) {
        if (value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0) {
            omcf->wait_replicas = 0;
            omcf->wait_timeout = 0;
            return NGX_CONF_OK;
        }

        return "takes \"off\" or a number of replicas and a timeout";
    }

    omcf->wait_replicas = ngx_atoi(value[1].data, value[1].len);

    if (omcf->wait_replicas == NGX_ERROR || omcf->wait_replicas < 1
        || omcf->wait_replicas > 100)
    {
        return "has an invalid number of replicas (1 to 100)";
    }

    omcf->wait_timeout = ngx_parse_time(&value[2], 0);

    if (omcf->wait_timeout == (ngx_msec_t) NGX_ERROR
        || omcf->wait_timeout == 0)
    {
        return "has an invalid timeout (it must be greater than zero)";
    }

    return NGX_CONF_OK;
}

