/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * A fleet change decided by each worker for the WebSocket agents it
 * holds.  Redis is asked once per change what changed (the recent
 * config_versions and what each concerned, the groups by precedence:
 * src/lua/fanout.lua); the worker matches each agent it keeps a view of
 * against them, sends the agents that are owed a config their frames
 * from one encoding of it per config, and then writes what it decided
 * in bulk (src/lua/offered.lua, src/ngx_http_opamp_fanout_offered.c), a
 * few commands an agent and no script call of its own.  An agent the
 * worker cannot vouch for (no view yet, a change it does not know the
 * scope of, its own config, a fleet-wide offer) is checked by Redis as
 * before (src/lua/check.lua).
 */


#include "ngx_http_opamp_fanout.h"
#include "ngx_http_opamp_session_internal.h"
#include "ngx_http_opamp_metrics.h"
#include "ngx_http_opamp_store.h"
#include "ngx_http_opamp_uid.h"

#include <ngx_sha1.h>


/* "group:" and the longest group name (docs/redis-schema.md) */
#define NGX_HTTP_OPAMP_DESIRED_MAX    (6 + 128)


/* one recent change: "<version> <scope>" of <prefix>config_version_log */
typedef struct {
    uint64_t                        version;
    ngx_str_t                       scope;
} ngx_http_opamp_fanout_log_t;


/* one group of the change, by precedence; strings point into the reply */
typedef struct {
    ngx_str_t                       name;
    ngx_str_t                      *pairs;      /* key, value, ... */
    ngx_uint_t                      npairs;
    u_char                          hash[32];
    unsigned                        matchable:1;  /* a hash, a selector
                                                     that parses */
    unsigned                        rolling:1;  /* a staged rollout's */
    uint64_t                        cutoff;     /* of the rollout's stage */
    ngx_str_t                       hex;        /* a rollout's new
                                                   version: its hash */
    ngx_uint_t                      nth;        /* among the owed */
    unsigned                        owed:1;     /* some agent is owed it */
} ngx_http_opamp_fanout_group_t;


/* an agent owed a group's config, until its files are read */
typedef struct {
    uint64_t                        conn_number;
    ngx_uint_t                      group;
} ngx_http_opamp_fanout_owed_t;


/* a fleet change in progress on this worker, while the files of the
 * configs owed are read */
typedef struct {
    uint64_t                        version;
    ngx_http_opamp_fanout_owed_t   *owed;       /* group: the config's
                                                   place in the answer */
    ngx_uint_t                      nowed;
    ngx_uint_t                      nalloc;
} ngx_http_opamp_fanout_t;


static void ngx_http_opamp_fanout_request(void);
static void ngx_http_opamp_fanout_viewed(redisReply *reply, void *data);
static ngx_int_t ngx_http_opamp_fanout_rollout(redisReply *e,
    ngx_http_opamp_fanout_group_t *g, ngx_http_opamp_fanout_group_t *v);
static uint64_t ngx_http_opamp_fanout_rank(u_char *uid);
static ngx_int_t ngx_http_opamp_fanout_groups(redisReply *list,
    ngx_http_opamp_fanout_group_t **groups, ngx_uint_t *n);
static ngx_int_t ngx_http_opamp_fanout_decide(ngx_http_opamp_session_t *s,
    uint64_t version, ngx_http_opamp_fanout_log_t *log, ngx_uint_t nlog,
    uint64_t safe_from, ngx_http_opamp_fanout_group_t *groups,
    ngx_uint_t ngroups, ngx_uint_t *owed);
static ngx_int_t ngx_http_opamp_fanout_match(ngx_http_opamp_view_t *v,
    ngx_http_opamp_fanout_group_t *groups, ngx_uint_t n);
static ngx_str_t *ngx_http_opamp_fanout_attr(ngx_http_opamp_attrs_t *a,
    ngx_str_t *key);
static void ngx_http_opamp_fanout_files(redisReply *reply, void *data);
static void ngx_http_opamp_fanout_send(ngx_http_opamp_fanout_t *f,
    ngx_uint_t nth, redisReply *files);
static ngx_int_t ngx_http_opamp_fanout_owe(ngx_http_opamp_fanout_t *f,
    ngx_http_opamp_session_t *s, ngx_uint_t group);
static void ngx_http_opamp_fanout_finish(ngx_http_opamp_fanout_t *f);
static void ngx_http_opamp_fanout_set_desired(ngx_http_opamp_view_t *v,
    u_char *desired, size_t len);
static ngx_int_t ngx_http_opamp_fanout_number(redisReply *e,
    uint64_t *v);
static ngx_int_t ngx_http_opamp_fanout_hash(redisReply *e, u_char *hash,
    ngx_uint_t *has);
static uint64_t ngx_http_opamp_fanout_now(void);


/* a change of the fleet is being decided (a call out), and another came */
static ngx_uint_t                   ngx_http_opamp_fanout_busy;
static ngx_uint_t                   ngx_http_opamp_fanout_again;

/*
 * Fleet messages against config_version: every change the module or a
 * control plane makes by the documented way increments config_version
 * and publishes one message; a message that comes without an increment
 * (a control plane that queued custom messages or commands and told the
 * fleet) is a change the worker cannot see, and every agent is checked
 * by Redis.  msgs: messages not yet accounted for; seen: config_version
 * at the last decision; credit: increments of the fleet (the log's
 * entries but one agent's own config) whose messages are still on their
 * way (they come on another connection than the increment is read on).
 */
static ngx_uint_t                   ngx_http_opamp_fanout_msgs;
static ngx_uint_t                   ngx_http_opamp_fanout_taken;
static uint64_t                     ngx_http_opamp_fanout_seen;
static uint64_t                     ngx_http_opamp_fanout_credit;

/* the parts of a change still under way, and when the first began */
static ngx_uint_t                   ngx_http_opamp_fanout_parts;
static ngx_msec_t                   ngx_http_opamp_fanout_started;


/*
 * The attributes of a description as lib/attributes.lua makes them:
 * identifying and non-identifying alike, an identifying one winning
 * over a non-identifying one of the same key, the last of a kind
 * winning; strings as they are, booleans as "true"/"false", integers in
 * decimal; other values are not selectable.  The server-set attributes
 * (opamp_agent_attribute) are placed last and so win over both
 * (lib/owed_config.lua, resolve()).  Sorted by key, so that a selector's
 * key is found by halving.
 */

ngx_http_opamp_attrs_t *
ngx_http_opamp_fanout_attributes(Opamp__Proto__V1__AgentDescription *d,
    ngx_http_opamp_identity_t *id, ngx_log_t *log)
{
    u_char                            *p;
    size_t                             size, n, i, j, k, kind, count;
    ngx_http_opamp_attr_t             *a, tmp;
    ngx_http_opamp_attrs_t            *attrs;
    Opamp__Proto__V1__KeyValue       **list, *kv;
    Opamp__Proto__V1__AnyValue        *val;

    n = d->n_identifying_attributes + d->n_non_identifying_attributes;
    size = 0;

    if (id) {
        n += id->nattrs;

        for (i = 0; i < id->nattrs; i++) {
            size += id->attrs[i].key.len + id->attrs[i].value.len;
        }
    }

    for (kind = 0; kind < 2; kind++) {
        list = kind ? d->identifying_attributes
                    : d->non_identifying_attributes;
        count = kind ? d->n_identifying_attributes
                     : d->n_non_identifying_attributes;

        for (i = 0; i < count; i++) {
            kv = list[i];
            size += (kv->key ? ngx_strlen(kv->key) : 0) + NGX_INT64_LEN;

            if (kv->value && kv->value->value_case
                == OPAMP__PROTO__V1__ANY_VALUE__VALUE_STRING_VALUE)
            {
                size += ngx_strlen(kv->value->string_value);
            }
        }
    }

    attrs = ngx_alloc(sizeof(ngx_http_opamp_attrs_t)
                      + n * sizeof(ngx_http_opamp_attr_t) + size, log);
    if (attrs == NULL) {
        return NULL;
    }

    p = (u_char *) &attrs->attr[n ? n : 1];
    k = 0;

    /* non-identifying first: a later entry of the same key wins, and the
     * sort below is stable for equal keys by their place */

    for (kind = 0; kind < 2; kind++) {
        list = kind ? d->identifying_attributes
                    : d->non_identifying_attributes;
        count = kind ? d->n_identifying_attributes
                     : d->n_non_identifying_attributes;

        for (i = 0; i < count; i++) {
            kv = list[i];
            val = kv->value;

            if (val == NULL) {
                continue;
            }

            a = &attrs->attr[k];
            a->key.data = p;
            a->key.len = kv->key ? ngx_strlen(kv->key) : 0;
            p = ngx_cpymem(p, kv->key, a->key.len);
            a->value.data = p;

            switch (val->value_case) {

            case OPAMP__PROTO__V1__ANY_VALUE__VALUE_STRING_VALUE:
                p = ngx_cpymem(p, val->string_value,
                               ngx_strlen(val->string_value));
                break;

            case OPAMP__PROTO__V1__ANY_VALUE__VALUE_BOOL_VALUE:
                p = val->bool_value ? ngx_cpymem(p, "true", 4)
                                    : ngx_cpymem(p, "false", 5);
                break;

            case OPAMP__PROTO__V1__ANY_VALUE__VALUE_INT_VALUE:
                p = ngx_sprintf(p, "%L", val->int_value);
                break;

            default:
                continue;
            }

            a->value.len = p - a->value.data;
            k++;
        }
    }

    for (i = 0; id && i < id->nattrs; i++) {
        a = &attrs->attr[k++];
        a->key.data = p;
        a->key.len = id->attrs[i].key.len;
        p = ngx_cpymem(p, id->attrs[i].key.data, a->key.len);
        a->value.data = p;
        a->value.len = id->attrs[i].value.len;
        p = ngx_cpymem(p, id->attrs[i].value.data, a->value.len);
    }

    /* sorted by key, equal keys kept in their order (an insertion sort:
     * stable, and at most NGX_HTTP_OPAMP_MAX_ATTRIBUTES of them) */

    for (i = 1; i < k; i++) {
        tmp = attrs->attr[i];

        for (j = i;
             j > 0 && ngx_memn2cmp(attrs->attr[j - 1].key.data, tmp.key.data,
                                   attrs->attr[j - 1].key.len, tmp.key.len)
                      > 0;
             j--)
        {
            attrs->attr[j] = attrs->attr[j - 1];
        }

        attrs->attr[j] = tmp;
    }

    /* of equal keys, the last placed wins */

    n = 0;

    for (i = 0; i < k; i++) {
        if (n && attrs->attr[n - 1].key.len == attrs->attr[i].key.len
            && ngx_memcmp(attrs->attr[n - 1].key.data,
                          attrs->attr[i].key.data, attrs->attr[i].key.len)
               == 0)
        {
            attrs->attr[n - 1] = attrs->attr[i];
            continue;
        }

        attrs->attr[n++] = attrs->attr[i];
    }

    attrs->n = n;

    return attrs;
}


static ngx_str_t *
ngx_http_opamp_fanout_attr(ngx_http_opamp_attrs_t *a, ngx_str_t *key)
{
    int         rc;
    ngx_uint_t  lo, hi, mid;

    lo = 0;
    hi = a->n;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;

        rc = ngx_memn2cmp(a->attr[mid].key.data, key->data,
                          a->attr[mid].key.len, key->len);

        if (rc == 0) {
            return &a->attr[mid].value;
        }

        if (rc < 0) {
            lo = mid + 1;

        } else {
            hi = mid;
        }
    }

    return NULL;
}


void
ngx_http_opamp_fanout_learn(ngx_http_opamp_session_t *s, redisReply **e,
    ngx_http_opamp_attrs_t *attrs)
{
    ngx_uint_t              has;
    ngx_http_opamp_view_t  *v;

    if (!(s->capabilities & NGX_HTTP_OPAMP_ACAP_ACCEPTS_REMOTE_CONFIG)
        || s->transport != NGX_HTTP_OPAMP_TRANSPORT_WS)
    {
        ngx_http_opamp_fanout_forget(s);

        if (attrs) {
            ngx_free(attrs);
        }

        return;
    }

    v = s->view;

    if (v == NULL) {
        v = ngx_calloc(sizeof(ngx_http_opamp_view_t), s->connection->log);
        if (v == NULL) {
            if (attrs) {
                ngx_free(attrs);
            }

            return;
        }

        s->view = v;
    }

    if (attrs) {
        if (v->attrs) {
            ngx_free(v->attrs);
        }

        v->attrs = attrs;
    }

    if (e == NULL) {
        return;
    }

    /* usable only when every field reads as the scripts wrote it */

    v->known = 0;

    if (e[0]->type == REDIS_REPLY_NIL
        || (e[0]->type == REDIS_REPLY_STRING && e[0]->len == 0))
    {
        v->version = 0;

    } else if (ngx_http_opamp_fanout_number(e[0], &v->version) != NGX_OK) {
        return;
    }

    if (e[1]->type == REDIS_REPLY_STRING && e[1]->len) {
        if (e[1]->len > NGX_HTTP_OPAMP_DESIRED_MAX) {
            return;
        }

        ngx_http_opamp_fanout_set_desired(v, (u_char *) e[1]->str,
                                          e[1]->len);
        if (v->desired == NULL) {
            return;
        }

    } else {
        ngx_http_opamp_fanout_set_desired(v, NULL, 0);
    }

    if (ngx_http_opamp_fanout_hash(e[2], v->desired_hash, &has) != NGX_OK) {
        return;
    }

    v->has_desired_hash = has;

    if (ngx_http_opamp_fanout_hash(e[3], v->offered_hash, &has) != NGX_OK) {
        return;
    }

    v->has_offered_hash = has;
    v->offered_ms = 0;

    if (e[4]->type == REDIS_REPLY_STRING && e[4]->len
        && ngx_http_opamp_fanout_number(e[4], &v->offered_ms) != NGX_OK)
    {
        return;
    }

    /* what the agent reported is its own: anything but a SHA-256 in hex
     * equals no config's hash */

    if (ngx_http_opamp_fanout_hash(e[5], v->reported_hash, &has) == NGX_OK) {
        v->reported = has ? 1 : 0;

    } else {
        v->reported = 2;
    }

    /* likewise the hash it failed: anything else than a SHA-256 in hex
     * is no config's hash, and keeps none from being offered */

    if (ngx_http_opamp_fanout_hash(e[6], v->failed_hash, &has) == NGX_OK) {
        v->has_failed_hash = has;

    } else {
        v->has_failed_hash = 0;
    }

    v->known = 1;
}


void
ngx_http_opamp_fanout_forget(ngx_http_opamp_session_t *s)
{
    ngx_http_opamp_view_t  *v;

    v = s->view;

    if (v == NULL) {
        return;
    }

    if (v->attrs) {
        ngx_free(v->attrs);
    }

    if (v->desired) {
        ngx_free(v->desired);
    }

    ngx_free(v);
    s->view = NULL;
}


static void
ngx_http_opamp_fanout_set_desired(ngx_http_opamp_view_t *v, u_char *desired,
    size_t len)
{
    if (v->desired && v->desired_len == len
        && ngx_memcmp(v->desired, desired, len) == 0)
    {
        return;
    }

    if (v->desired) {
        ngx_free(v->desired);
        v->desired = NULL;
    }

    v->desired_len = 0;

    if (len == 0) {
        return;
    }

    v->desired = ngx_alloc(len, ngx_cycle->log);
    if (v->desired == NULL) {
        return;
    }

    ngx_memcpy(v->desired, desired, len);
    v->desired_len = len;
}


void
ngx_http_opamp_fanout_change(void)
{
    ngx_http_opamp_metrics_inc(NGX_HTTP_OPAMP_M_FANOUTS);

    /* with no agent here, there is nothing to decide nor to account for:
     * the next change is taken for the first the worker sees */

    if (ngx_http_opamp_sessions.root == ngx_http_opamp_sessions.sentinel) {
        return;
    }

    ngx_http_opamp_fanout_msgs++;

    /* a change that comes while one is decided is decided after it, from
     * what Redis holds then: both at once */

    if (ngx_http_opamp_fanout_busy) {
        ngx_http_opamp_fanout_again = 1;
        return;
    }

    ngx_http_opamp_fanout_request();
}


static void
ngx_http_opamp_fanout_request(void)
{
    const char                  *argv[4];
    size_t                       lens[4];
    ngx_str_t                    version, groups;
    ngx_http_opamp_main_conf_t  *omcf;

    omcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_opamp_module);

    version.len = omcf->prefix.len + sizeof("config_version") - 1;
    groups.len = omcf->prefix.len + sizeof("groups") - 1;

    version.data = ngx_alloc(version.len + groups.len, ngx_cycle->log);
    if (version.data == NULL) {
        return;
    }

    groups.data = ngx_sprintf(version.data, "%Vconfig_version",
                              &omcf->prefix);
    (void) ngx_sprintf(groups.data, "%Vgroups", &omcf->prefix);

    argv[0] = (const char *) version.data;
    lens[0] = version.len;
    argv[1] = (const char *) groups.data;
    lens[1] = groups.len;
    argv[2] = (const char *) omcf->prefix.data;
    lens[2] = omcf->prefix.len;
    argv[3] = "";
    lens[3] = 0;

    ngx_http_opamp_fanout_begin();

    ngx_http_opamp_fanout_taken = ngx_http_opamp_fanout_msgs;
    ngx_http_opamp_fanout_msgs = 0;

    if (ngx_http_opamp_store_eval(NGX_HTTP_OPAMP_SCRIPT_FANOUT, 2, 4, argv,
                                  lens, ngx_http_opamp_fanout_viewed, NULL)
        == NULL)
    {
        /* Redis is down: the agents are asked for their full state later
         * and get what they are owed then */
        ngx_http_opamp_fanout_end();

    } else {
        ngx_http_opamp_fanout_busy = 1;
    }

    ngx_free(version.data);
}


static void
ngx_http_opamp_fanout_viewed(redisReply *reply, void *data)
{
    u_char                          *p, *last, *names;
    size_t                           len, lens[4];
    uint64_t                         version, safe_from, expect;
    ngx_int_t                        rc;
    ngx_uint_t                       i, nlog, ngroups, g, nth, all;
    redisReply                      *e;
    const char                      *argv[4];
    ngx_rbtree_node_t               *node, *root, *sentinel;
    ngx_http_opamp_fanout_t         *f;
    ngx_http_opamp_session_t        *s;
    ngx_http_opamp_main_conf_t      *omcf;
    ngx_http_opamp_fanout_log_t      log[64];
    ngx_http_opamp_check_batch_t    *b;
    ngx_http_opamp_fanout_group_t   *groups;

    ngx_http_opamp_fanout_busy = 0;
    f = NULL;
    groups = NULL;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 4
        || reply->element[1]->type != REDIS_REPLY_ARRAY
        || reply->element[2]->type != REDIS_REPLY_ARRAY
        || ngx_http_opamp_fanout_number(reply->element[0], &version)
           != NGX_OK)
    {
        /* what the messages meant is still to be found out */
        ngx_http_opamp_fanout_msgs += ngx_http_opamp_fanout_taken;
        ngx_http_opamp_fanout_taken = 0;

        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "opamp: a fleet change could not be read from redis%s%s",
                      (reply && reply->type == REDIS_REPLY_ERROR) ? ": " : "",
                      (reply && reply->type == REDIS_REPLY_ERROR)
                      ? reply->str : "");
        goto done;
    }

    /* the recent changes, newest first */

    nlog = 0;
    e = reply->element[1];

    for (i = 0; i < e->elements && nlog < 64; i++) {
        if (e->element[i]->type != REDIS_REPLY_STRING) {
            continue;
        }

        p = (u_char *) e->element[i]->str;
        last = p + e->element[i]->len;
        log[nlog].version = 0;

        for ( /* void */ ; p < last && *p >= '0' && *p <= '9'; p++) {
            log[nlog].version = log[nlog].version * 10 + (*p - '0');
        }

        if (p == last || *p != ' ') {
            continue;
        }

        log[nlog].scope.data = p + 1;
        log[nlog].scope.len = last - p - 1;
        nlog++;
    }

    /* back from the newest, as long as each version has its entry and
     * none is a fleet-wide offer: the changes the worker can vouch for;
     * a writer that increments config_version alone leaves a gap */

    expect = version;

    for (i = 0; i < nlog && log[i].version == expect; i++) {
        if (log[i].scope.len == 4
            && ngx_strncmp(log[i].scope.data, "none", 4) == 0)
        {
            break;
        }

        expect--;
    }

    safe_from = expect;

    /* more messages than increments: something else changed too; the
     * first change a worker sees is taken for one increment */

    if (version < ngx_http_opamp_fanout_seen) {
        /* Redis went back (flushed, or a replica that had less): what
         * was counted before is void, and so are the views (below) */
        ngx_http_opamp_fanout_seen = 0;
        ngx_http_opamp_fanout_credit = 0;
    }

    if (ngx_http_opamp_fanout_seen == 0 && version > 0) {
        ngx_http_opamp_fanout_seen = version - 1;
    }

    /* the changes since the last decision that told the fleet (one's
     * own config tells the worker that holds the agent only; a change
     * without its entry counts for none: its message, if any, makes
     * every agent be checked) */

    for (i = 0; i < nlog && log[i].version > ngx_http_opamp_fanout_seen;
         i++)
    {
        if (log[i].version <= version
            && !(log[i].scope.len > 6
                 && ngx_strncmp(log[i].scope.data, "agent:", 6) == 0))
        {
            ngx_http_opamp_fanout_credit++;
        }
    }

    if (version > ngx_http_opamp_fanout_seen) {
        ngx_http_opamp_fanout_seen = version;
    }

    if (ngx_http_opamp_fanout_taken > ngx_http_opamp_fanout_credit) {
        ngx_http_opamp_fanout_credit = 0;
        all = 1;

    } else {
        ngx_http_opamp_fanout_credit -= ngx_http_opamp_fanout_taken;
        all = 0;
    }

    ngx_http_opamp_fanout_taken = 0;

    if (ngx_http_opamp_fanout_groups(reply->element[2], &groups, &ngroups)
        != NGX_OK)
    {
        goto done;
    }

    f = ngx_calloc(sizeof(ngx_http_opamp_fanout_t), ngx_cycle->log);
    if (f == NULL) {
        goto done;
    }

    f->version = version;

    root = ngx_http_opamp_sessions.root;
    sentinel = ngx_http_opamp_sessions.sentinel;
    b = NULL;

    for (node = (root != sentinel) ? ngx_rbtree_min(root, sentinel) : NULL;
         node;
         node = ngx_rbtree_next(&ngx_http_opamp_sessions, node))
    {
        s = (ngx_http_opamp_session_t *)
                ((u_char *) node - offsetof(ngx_http_opamp_session_t, node));

        if (!ngx_http_opamp_session_checkable(s)) {
            continue;
        }

        rc = all ? NGX_DECLINED
                 : ngx_http_opamp_fanout_decide(s, version, log, nlog,
                                                safe_from, groups, ngroups,
                                                &g);

        if (rc == NGX_DECLINED) {
            /* Redis decides for it, as before */
            ngx_http_opamp_session_check_add(&b, s);

        } else if (rc == NGX_AGAIN) {
            if (ngx_http_opamp_fanout_owe(f, s, g) == NGX_OK) {
                groups[g].owed = 1;
            }
        }
    }

    ngx_http_opamp_session_check_flush(&b);

    /* what was decided without an offer goes to Redis now */
    ngx_http_opamp_fanout_flush();

    if (f->nowed == 0) {
        goto done;
    }

    /* the files of the configs owed, one call for all: each owed agent
     * names its config by its place in that call */

    len = 0;
    nth = 0;

    for (g = 0; g < 2 * ngroups; g++) {
        if (groups[g].owed) {
            len += groups[g].name.len + 1 + (groups[g].hex.len ? 65 : 0);
            groups[g].nth = nth++;
        }
    }

    for (i = 0; i < f->nowed; i++) {
        f->owed[i].group = groups[f->owed[i].group].nth;
    }

    omcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                               ngx_http_opamp_module);

    names = ngx_alloc(len + 2 * omcf->prefix.len
                      + sizeof("config_versiongroups"), ngx_cycle->log);
    if (names == NULL) {
        goto done;
    }

    p = names;

    for (g = 0; g < 2 * ngroups; g++) {
        if (groups[g].owed) {
            p = ngx_cpymem(p, groups[g].name.data, groups[g].name.len);

            if (groups[g].hex.len) {
                *p++ = '@';
                p = ngx_cpymem(p, groups[g].hex.data, groups[g].hex.len);
            }

            *p++ = '\n';
        }
    }

    argv[3] = (const char *) names;
    lens[3] = len;

    argv[0] = (const char *) p;
    p = ngx_sprintf(p, "%Vconfig_version", &omcf->prefix);
    lens[0] = p - (u_char *) argv[0];

    argv[1] = (const char *) p;
    p = ngx_sprintf(p, "%Vgroups", &omcf->prefix);
    lens[1] = p - (u_char *) argv[1];

    argv[2] = (const char *) omcf->prefix.data;
    lens[2] = omcf->prefix.len;

    if (ngx_http_opamp_store_eval(NGX_HTTP_OPAMP_SCRIPT_FANOUT, 2, 4, argv,
                                  lens, ngx_http_opamp_fanout_files, f)
        != NULL)
    {
        ngx_free(names);
        ngx_free(groups);
        ngx_http_opamp_fanout_busy = 1;
        return;
    }

    ngx_free(names);

done:

    if (groups) {
        ngx_free(groups);
    }

    if (f) {
        ngx_http_opamp_fanout_finish(f);
        return;
    }

    ngx_http_opamp_fanout_end();

    if (ngx_http_opamp_fanout_again) {
        ngx_http_opamp_fanout_again = 0;
        ngx_http_opamp_fanout_change();
    }
}


/* s is owed the config of group g, once its files are read */

static ngx_int_t
ngx_http_opamp_fanout_owe(ngx_http_opamp_fanout_t *f,
    ngx_http_opamp_session_t *s, ngx_uint_t g)
{
    ngx_http_opamp_fanout_owed_t  *o;

    if (f->nowed == f->nalloc) {
        o = ngx_alloc((f->nalloc * 2 + 64)
                      * sizeof(ngx_http_opamp_fanout_owed_t),
                      ngx_cycle->log);
        if (o == NULL) {
            return NGX_ERROR;
        }

        if (f->owed) {
            ngx_memcpy(o, f->owed,
                       f->nowed * sizeof(ngx_http_opamp_fanout_owed_t));
            ngx_free(f->owed);
        }

        f->owed = o;
        f->nalloc = f->nalloc * 2 + 64;
    }

    f->owed[f->nowed].conn_number = s->conn_number;
    f->owed[f->nowed].group = g;
    f->nowed++;

    return NGX_OK;
}


/* a group's staged rollout, "<to_hash> <cutoff>" or "": its new version
 * as the group v, whose files are asked for as "<name>@<to_hash>" */

static ngx_int_t
ngx_http_opamp_fanout_rollout(redisReply *e, ngx_http_opamp_fanout_group_t *g,
    ngx_http_opamp_fanout_group_t *v)
{
    u_char      *p, *last;
    uint64_t     cutoff;
    ngx_uint_t   has;
    redisReply   hash;

    if (e->len == 0) {
        return NGX_OK;
    }

    if (e->len < 64 + 2 || e->str[64] != ' ') {
        return NGX_ERROR;
    }

    hash = *e;
    hash.len = 64;

    if (ngx_http_opamp_fanout_hash(&hash, v->hash, &has) != NGX_OK || !has) {
        return NGX_ERROR;
    }

    cutoff = 0;
    p = (u_char *) e->str + 65;
    last = (u_char *) e->str + e->len;

    if (p == last || last - p > 12) {
        return NGX_ERROR;
    }

    for ( /* void */ ; p < last; p++) {
        if (*p < '0' || *p > '9') {
            return NGX_ERROR;
        }

        cutoff = cutoff * 10 + (*p - '0');
    }

    v->name = g->name;
    v->hex.data = (u_char *) e->str;
    v->hex.len = 64;
    g->rolling = 1;
    g->cutoff = cutoff;

    return NGX_OK;
}


/* the groups of fanout.lua's answer, their selectors parsed */

static ngx_int_t
ngx_http_opamp_fanout_groups(redisReply *list,
    ngx_http_opamp_fanout_group_t **groups, ngx_uint_t *n)
{
    u_char                         *p, *last, *comma, *eq;
    size_t                          npairs;
    ngx_uint_t                      i, k, has;
    ngx_str_t                      *pairs;
    redisReply                    **el;
    ngx_http_opamp_fanout_group_t  *g;

    *n = list->elements / 4;
    npairs = 0;
    el = list->element;

    for (i = 0; i < *n * 4; i++) {
        if (el[i]->type != REDIS_REPLY_STRING) {
            return NGX_ERROR;
        }

        if (i % 4 == 1) {
            /* a pair per '=', at most */
            for (k = 0; k < el[i]->len; k++) {
                npairs += (el[i]->str[k] == '=');
            }
        }
    }

    /* a group at i, and at n + i the new version of its staged rollout */

    *groups = ngx_calloc(2 * *n * sizeof(ngx_http_opamp_fanout_group_t)
                         + 2 * npairs * sizeof(ngx_str_t) + 1,
                         ngx_cycle->log);
    if (*groups == NULL) {
        return NGX_ERROR;
    }

    pairs = (ngx_str_t *) &(*groups)[2 * *n];

    for (i = 0; i < *n; i++) {
        g = &(*groups)[i];

        g->name.data = (u_char *) el[4 * i]->str;
        g->name.len = el[4 * i]->len;
        g->pairs = pairs;

        if (ngx_http_opamp_fanout_rollout(el[4 * i + 3], g, &(*groups)[*n + i])
            != NGX_OK)
        {
            continue;
        }

        if (ngx_http_opamp_fanout_hash(el[4 * i + 2], g->hash, &has)
            != NGX_OK || !has)
        {
            continue;
        }

        /* "k=v,k2=v2" as lib/owed_config.lua's parse_selector() reads
         * it: empty pieces skipped, a piece without a key spoils it */

        p = (u_char *) el[4 * i + 1]->str;
        last = p + el[4 * i + 1]->len;
        g->matchable = 1;

        while (p < last) {
            comma = ngx_strlchr(p, last, ',');
            if (comma == NULL) {
                comma = last;
            }

            if (comma == p) {
                p++;
                continue;
            }

            eq = ngx_strlchr(p, comma, '=');

            if (eq == NULL || eq == p) {
                g->matchable = 0;
                break;
            }

            pairs[0].data = p;
            pairs[0].len = eq - p;
            pairs[1].data = eq + 1;
            pairs[1].len = comma - eq - 1;
            pairs += 2;
            g->npairs++;

            p = comma + 1;
        }
    }

    return NGX_OK;
}


/*
 * What the change means for one agent: NGX_DECLINED: Redis must decide
 * (check.lua); NGX_AGAIN: owed the config of group *owed; NGX_OK:
 * decided, noted for offered.lua; NGX_DONE: nothing to do.
 */

static ngx_int_t
ngx_http_opamp_fanout_decide(ngx_http_opamp_session_t *s, uint64_t version,
    ngx_http_opamp_fanout_log_t *log, ngx_uint_t nlog, uint64_t safe_from,
    ngx_http_opamp_fanout_group_t *groups, ngx_uint_t ngroups,
    ngx_uint_t *owed)
{
    u_char                  uid[NGX_HTTP_OPAMP_UID_STR_LEN];
    u_char                  desired[NGX_HTTP_OPAMP_DESIRED_MAX];
    size_t                  desired_len;
    ngx_int_t               g;
    ngx_uint_t              i, rematch, moved, has_hash, changed;
    ngx_http_opamp_view_t  *v;
    u_char                  hash[32];
    uint64_t                from;

    v = s->view;

    if (!(s->capabilities & NGX_HTTP_OPAMP_ACAP_ACCEPTS_REMOTE_CONFIG)) {

        /* no config to decide: its settled mark moves if nothing but
         * configs changed since it was made */

        if (safe_from < version) {
            ngx_http_opamp_fanout_note(s, version, safe_from, "");
            return NGX_OK;
        }

        return NGX_DONE;
    }

    if (v == NULL || !v->known) {
        return NGX_DECLINED;
    }

    if (v->version == version) {
        /* a report of the agent saw this change already */
        return NGX_DONE;
    }

    if (v->version > version) {
        /* Redis went back under the view: Redis decides */
        v->known = 0;
        return NGX_DECLINED;
    }

    if (v->version < safe_from) {
        /* a change it cannot vouch for came since the agent's view */
        return NGX_DECLINED;
    }

    ngx_http_opamp_uid_format(uid, s->uid);

    rematch = 0;
    moved = 0;

    for (i = 0; i < nlog && log[i].version > v->version; i++) {

        if (log[i].scope.len == 3
            && ngx_strncmp(log[i].scope.data, "all", 3) == 0)
        {
            rematch = 1;

        } else if (log[i].scope.len == 6 + NGX_HTTP_OPAMP_UID_STR_LEN
                   && ngx_strncmp(log[i].scope.data, "agent:", 6) == 0)
        {
            if (ngx_strncmp(log[i].scope.data + 6, uid,
                            NGX_HTTP_OPAMP_UID_STR_LEN) == 0)
            {
                return NGX_DECLINED;
            }

        } else if (log[i].scope.len > 6
                   && ngx_strncmp(log[i].scope.data, "group:", 6) == 0)
        {
            if (v->desired_len == log[i].scope.len
                && ngx_strncmp(v->desired, log[i].scope.data,
                               v->desired_len) == 0)
            {
                moved = 1;
            }
        }
    }

    desired_len = v->desired_len;
    has_hash = v->has_desired_hash;
    ngx_memcpy(hash, v->desired_hash, 32);
    g = -1;

    if (desired_len == 5 && ngx_strncmp(v->desired, "agent", 5) == 0) {
        /* its own config comes first, and did not change */
        rematch = 0;
        moved = 0;
    }

    if (moved && !rematch) {
        /* its group's files changed: only the hash moves */

        for (i = 0; i < ngroups; i++) {
            if (groups[i].name.len + 6 == v->desired_len
                && ngx_strncmp(groups[i].name.data, v->desired + 6,
                               groups[i].name.len) == 0)
            {
                break;
            }
        }

        if (i < ngroups && groups[i].matchable) {
            g = i;

        } else {
            rematch = 1;
        }
    }

    if (rematch) {
        if (v->attrs == NULL) {
            return NGX_DECLINED;
        }

        g = ngx_http_opamp_fanout_match(v, groups, ngroups);

        if (g < 0) {
            desired_len = 0;
            has_hash = 0;
        }
    }

    if (g >= 0) {
        desired_len = 6 + groups[g].name.len;
        ngx_memcpy(ngx_cpymem(desired, "group:", 6), groups[g].name.data,
                   groups[g].name.len);

        /* in the stage of the group's staged rollout, by its rank as
         * lib/rollout.lua computes it: the new version */

        if (groups[g].rolling
            && ngx_http_opamp_fanout_rank(uid) < groups[g].cutoff)
        {
            g += ngroups;
        }

        ngx_memcpy(hash, groups[g].hash, 32);
        has_hash = 1;

    } else if (desired_len) {
        ngx_memcpy(desired, v->desired, desired_len);
    }

    /* whether what it counts for in the fleet gauges may move */

    changed = (desired_len != v->desired_len
               || ngx_memcmp(desired, v->desired, desired_len) != 0
               || has_hash != v->has_desired_hash
               || ngx_memcmp(hash, v->desired_hash, 32) != 0);

    ngx_http_opamp_fanout_set_desired(v, desired, desired_len);
    v->has_desired_hash = has_hash;
    ngx_memcpy(v->desired_hash, hash, 32);
    from = v->version;
    v->version = version;

    if (!has_hash
        || (v->reported == 1 && ngx_memcmp(v->reported_hash, hash, 32) == 0))
    {
        ngx_http_opamp_fanout_note(s, version, from, changed ? "c" : "");
        return NGX_OK;
    }

    /* failed by the agent: not offered again until its hash changes or
     * an operator retries (lib/owed_config.lua decides alike) */

    if (v->has_failed_hash && ngx_memcmp(v->failed_hash, hash, 32) == 0) {
        ngx_http_opamp_fanout_note(s, version, from, changed ? "c" : "");
        return NGX_OK;
    }

    /* offered already and not lost on the way: the agent is applying it */

    if (v->has_offered_hash && ngx_memcmp(v->offered_hash, hash, 32) == 0
        && ngx_http_opamp_fanout_now() < v->offered_ms
                                         + s->conf->agent_timeout)
    {
        ngx_http_opamp_fanout_note(s, version, from, changed ? "c" : "");
        return NGX_OK;
    }

    if (g < 0) {
        /* its own config is owed again: Redis has its files */
        v->known = 0;
        return NGX_DECLINED;
    }

    *owed = g;

    return NGX_AGAIN;
}


/* the group of highest precedence whose selector the attributes match */

static ngx_int_t
ngx_http_opamp_fanout_match(ngx_http_opamp_view_t *v,
    ngx_http_opamp_fanout_group_t *groups, ngx_uint_t n)
{
    ngx_str_t   *value;
    ngx_uint_t   i, k;

    for (i = 0; i < n; i++) {
        if (!groups[i].matchable) {
            continue;
        }

        for (k = 0; k < groups[i].npairs; k++) {
            value = ngx_http_opamp_fanout_attr(v->attrs,
                                               &groups[i].pairs[2 * k]);

            if (value == NULL
                || value->len != groups[i].pairs[2 * k + 1].len
                || ngx_memcmp(value->data, groups[i].pairs[2 * k + 1].data,
                              value->len) != 0)
            {
                break;
            }
        }

        if (k == groups[i].npairs) {
            return i;
        }
    }

    return -1;
}


/* the files of the owed configs: { version, log, groups, { name, fields,
 * ... } } in the order the names were asked for */

static void
ngx_http_opamp_fanout_files(redisReply *reply, void *data)
{
    ngx_http_opamp_fanout_t *f = data;

    ngx_uint_t   i;
    redisReply  *files;

    ngx_http_opamp_fanout_busy = 0;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 4
        || reply->element[3]->type != REDIS_REPLY_ARRAY)
    {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "opamp: the configs of a fleet change could not be "
                      "read from redis");
        ngx_http_opamp_fanout_finish(f);
        return;
    }

    files = reply->element[3];

    for (i = 0; i + 1 < files->elements; i += 2) {
        if (files->element[i + 1]->type == REDIS_REPLY_ARRAY) {
            ngx_http_opamp_fanout_send(f, i / 2, files->element[i + 1]);
        }
    }

    ngx_http_opamp_fanout_finish(f);
}


/*
 * The agents owed the nth config get it: one encoding of the
 * ServerToAgent for all of them, each copy with its own instance_uid in
 * front (field 1, where protobuf-c puts it too).
 */

static void
ngx_http_opamp_fanout_send(ngx_http_opamp_fanout_t *f, ngx_uint_t nth,
    redisReply *files)
{
    u_char                     *frame, *p;
    u_char                      hash[32];
    size_t                      i;
    ngx_str_t                   body, hex;
    ngx_uint_t                  k, has;
    ngx_http_opamp_owed_t       owed;
    ngx_http_opamp_view_t      *v;
    ngx_http_opamp_session_t   *s;
    ngx_http_opamp_s2a_t        s2a;

    /* the config's hash as its files say: the one that goes out */

    has = 0;

    for (i = 0; i + 1 < files->elements; i += 2) {
        if (files->element[i]->type == REDIS_REPLY_STRING
            && files->element[i]->len == 4
            && ngx_strncmp(files->element[i]->str, "hash", 4) == 0)
        {
            if (ngx_http_opamp_fanout_hash(files->element[i + 1], hash, &has)
                != NGX_OK)
            {
                has = 0;
            }

            hex.data = (u_char *) files->element[i + 1]->str;
            hex.len = files->element[i + 1]->len;

            break;
        }
    }

    if (!has) {
        /* the group went meanwhile: the change that took it is next */
        return;
    }

    if (ngx_http_opamp_session_config_message(files, &hex, &owed, &s2a,
                                              &body, ngx_cycle->log)
        != NGX_OK)
    {
        ngx_http_opamp_session_free_owed(&owed);
        return;
    }

    frame = ngx_alloc(2 + NGX_HTTP_OPAMP_UID_LEN + body.len, ngx_cycle->log);
    if (frame == NULL) {
        ngx_free(body.data);
        ngx_http_opamp_session_free_owed(&owed);
        return;
    }

    p = frame;
    *p++ = 0x0a;
    *p++ = NGX_HTTP_OPAMP_UID_LEN;
    ngx_memcpy(p + NGX_HTTP_OPAMP_UID_LEN, body.data, body.len);

    for (k = 0; k < f->nowed; k++) {
        if (f->owed[k].group != nth) {
            continue;
        }

        s = ngx_http_opamp_session_lookup(f->owed[k].conn_number);

        if (s == NULL || s->closed || s->view == NULL) {
            continue;
        }

        v = s->view;

        if (ngx_memcmp(v->desired_hash, hash, 32) != 0) {
            ngx_memcpy(v->desired_hash, hash, 32);
            v->has_desired_hash = 1;

            if (v->reported == 1
                && ngx_memcmp(v->reported_hash, hash, 32) == 0)
            {
                ngx_http_opamp_fanout_note(s, f->version, v->version, "c");
                continue;
            }
        }

        ngx_memcpy(p, s->uid, NGX_HTTP_OPAMP_UID_LEN);

        ngx_http_opamp_session_sent(s, &s2a);
        (void) s->send(s, frame, 2 + NGX_HTTP_OPAMP_UID_LEN + body.len);

        ngx_memcpy(v->offered_hash, hash, 32);
        v->has_offered_hash = 1;
        v->offered_ms = ngx_http_opamp_fanout_now();

        ngx_http_opamp_fanout_note(s, f->version, v->version, "oc");
    }

    ngx_free(frame);
    ngx_free(body.data);
    ngx_http_opamp_session_free_owed(&owed);
}


static void
ngx_http_opamp_fanout_finish(ngx_http_opamp_fanout_t *f)
{
    ngx_http_opamp_fanout_flush();

    if (f->owed) {
        ngx_free(f->owed);
    }

    ngx_free(f);

    ngx_http_opamp_fanout_end();

    if (ngx_http_opamp_fanout_again) {
        ngx_http_opamp_fanout_again = 0;
        ngx_http_opamp_fanout_change();
    }
}


void
ngx_http_opamp_fanout_begin(void)
{
    if (ngx_http_opamp_fanout_parts++ == 0) {
        ngx_http_opamp_fanout_started = ngx_current_msec;
    }
}


void
ngx_http_opamp_fanout_end(void)
{
    if (ngx_http_opamp_fanout_parts == 0) {
        return;
    }

    if (--ngx_http_opamp_fanout_parts == 0) {
        ngx_http_opamp_metrics_fanout_time(ngx_current_msec
                                           - ngx_http_opamp_fanout_started);
    }
}


/* a decimal string of the scripts */

/* the rank of a uid in staged rollouts (lib/rollout.lua): the first 32
 * bits of the SHA-1 of its canonical text */

static uint64_t
ngx_http_opamp_fanout_rank(u_char *uid)
{
    u_char      digest[20];
    ngx_sha1_t  sha1;

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, uid, NGX_HTTP_OPAMP_UID_STR_LEN);
    ngx_sha1_final(digest, &sha1);

    return ((uint64_t) digest[0] << 24) | ((uint64_t) digest[1] << 16)
           | ((uint64_t) digest[2] << 8) | digest[3];
}


static ngx_int_t
ngx_http_opamp_fanout_number(redisReply *e, uint64_t *v)
{
    size_t   i;

    if (e->type == REDIS_REPLY_INTEGER && e->integer >= 0) {
        *v = (uint64_t) e->integer;
        return NGX_OK;
    }

    if (e->type != REDIS_REPLY_STRING || e->len == 0 || e->len > 19) {
        return NGX_ERROR;
    }

    *v = 0;

    for (i = 0; i < e->len; i++) {
        if (e->str[i] < '0' || e->str[i] > '9') {
            return NGX_ERROR;
        }

        *v = *v * 10 + (e->str[i] - '0');
    }

    return NGX_OK;
}


/* a SHA-256 as the scripts keep it: 64 lowercase hex digits (*has 1), or
 * none (nil or empty: *has 0); anything else is NGX_ERROR, since the
 * scripts compare the text */

static ngx_int_t
ngx_http_opamp_fanout_hash(redisReply *e, u_char *hash, ngx_uint_t *has)
{
    size_t  i;

    *has = 0;

    if (e->type == REDIS_REPLY_NIL
        || (e->type == REDIS_REPLY_STRING && e->len == 0))
    {
        return NGX_OK;
    }

    if (e->type != REDIS_REPLY_STRING || e->len != 64) {
        return NGX_ERROR;
    }

    for (i = 0; i < 64; i++) {
        if (!((e->str[i] >= '0' && e->str[i] <= '9')
              || (e->str[i] >= 'a' && e->str[i] <= 'f')))
        {
            return NGX_ERROR;
        }
    }

    if (ngx_http_opamp_hex_decode(hash, (u_char *) e->str, 64) != 0) {
        return NGX_ERROR;
    }

    *has = 1;

    return NGX_OK;
}


/* Unix ms, as the scripts write offered_ms */

static uint64_t
ngx_http_opamp_fanout_now(void)
{
    ngx_time_t  *tp;

    tp = ngx_timeofday();

    return (uint64_t) tp->sec * 1000 + tp->msec;
}
