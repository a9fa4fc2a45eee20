/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * The reply parser of a Redis link: hiredis's redisReader, whose reply
 * objects are hiredis's own but each counted against the link's bound
 * (link->max_reply) as it is made.  A reply is bounded by what it holds
 * in the worker, not only by its bytes: an array of a million small
 * integers holds far more than it sent, and hiredis allocates an array's
 * element pointers as soon as it reads "*N".  The bytes not parsed yet
 * are checked by the read handler (ngx_http_opamp_redis.c).
 */


#include "ngx_http_opamp.h"
#include "ngx_http_opamp_redis.h"
#include "ngx_http_opamp_redis_link.h"


/* what one reply object costs the worker: hiredis's redisReply and what
 * malloc adds to a block */
#define NGX_HTTP_OPAMP_REDIS_OBJECT        (sizeof(redisReply) + 32)


static ngx_int_t ngx_http_opamp_redis_reply_charge(const redisReadTask *task,
    size_t size);
static void *ngx_http_opamp_redis_reply_string(const redisReadTask *task,
    char *str, size_t len);
static void *ngx_http_opamp_redis_reply_array(const redisReadTask *task,
    int elements);
static void *ngx_http_opamp_redis_reply_integer(const redisReadTask *task,
    long long value);
static void *ngx_http_opamp_redis_reply_nil(const redisReadTask *task);


/* hiredis's own reply objects, and ours that count what they cost */
static redisReplyObjectFunctions  ngx_http_opamp_redis_hiredis_fn;
static redisReplyObjectFunctions  ngx_http_opamp_redis_reply_fn = {
    ngx_http_opamp_redis_reply_string,
    ngx_http_opamp_redis_reply_array,
    ngx_http_opamp_redis_reply_integer,
    ngx_http_opamp_redis_reply_nil,
    NULL
};


redisReader *
ngx_http_opamp_redis_reader(ngx_http_opamp_redis_link_t *link)
{
    redisReader  *reader;

    reader = redisReaderCreate();
    if (reader == NULL) {
        return NULL;
    }

    /* hiredis 0.14 keeps its functions static: the reader knows them */

    if (ngx_http_opamp_redis_reply_fn.freeObject == NULL) {
        ngx_http_opamp_redis_hiredis_fn = *reader->fn;
        ngx_http_opamp_redis_reply_fn.freeObject =
                                ngx_http_opamp_redis_hiredis_fn.freeObject;
    }

    reader->fn = &ngx_http_opamp_redis_reply_fn;
    reader->privdata = link;

    link->reply_mem = 0;
    link->too_big = 0;

    return reader;
}


/* the reply objects: hiredis's own, each counted against the bound */

static ngx_int_t
ngx_http_opamp_redis_reply_charge(const redisReadTask *task, size_t size)
{
    ngx_http_opamp_redis_link_t *link = task->privdata;

    if (size > link->max_reply - link->reply_mem) {
        /* hiredis sees no memory; the link knows why */
        link->too_big = 1;
        return NGX_ERROR;
    }

    link->reply_mem += size;

    return NGX_OK;
}


static void *
ngx_http_opamp_redis_reply_string(const redisReadTask *task, char *str,
    size_t len)
{
    if (ngx_http_opamp_redis_reply_charge(task, NGX_HTTP_OPAMP_REDIS_OBJECT
                                                + len + 1)
        != NGX_OK)
    {
        return NULL;
    }

    return ngx_http_opamp_redis_hiredis_fn.createString(task, str, len);
}


static void *
ngx_http_opamp_redis_reply_array(const redisReadTask *task, int elements)
{
    /* hiredis allocates the element pointers as soon as it reads "*N" */

    if (ngx_http_opamp_redis_reply_charge(task, NGX_HTTP_OPAMP_REDIS_OBJECT
                                     + (size_t) ngx_max(elements, 0)
                                       * sizeof(redisReply *))
        != NGX_OK)
    {
        return NULL;
    }

    return ngx_http_opamp_redis_hiredis_fn.createArray(task, elements);
}


static void *
ngx_http_opamp_redis_reply_integer(const redisReadTask *task,
    long long value)
{
    if (ngx_http_opamp_redis_reply_charge(task, NGX_HTTP_OPAMP_REDIS_OBJECT)
        != NGX_OK)
    {
        return NULL;
    }

    return ngx_http_opamp_redis_hiredis_fn.createInteger(task, value);
}


static void *
ngx_http_opamp_redis_reply_nil(const redisReadTask *task)
{
    if (ngx_http_opamp_redis_reply_charge(task, NGX_HTTP_OPAMP_REDIS_OBJECT)
        != NGX_OK)
    {
        return NULL;
    }

    return ngx_http_opamp_redis_hiredis_fn.createNil(task);
}
