/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * What the fuzz targets share: a log that goes nowhere (t/fuzz/shim.c)
 * and a check that stops the run, so that libFuzzer keeps the input.
 */

#ifndef _NGX_HTTP_OPAMP_FUZZ_SHIM_H_INCLUDED_
#define _NGX_HTTP_OPAMP_FUZZ_SHIM_H_INCLUDED_


#include <stdio.h>
#include <stdlib.h>


extern ngx_log_t  *ngx_fuzz_log;


#define FUZZ_CHECK(cond, what)                                               \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: invariant broken: %s\n",                 \
                    __FILE__, __LINE__, what);                               \
            abort();                                                         \
        }                                                                    \
    } while (0)


#endif /* _NGX_HTTP_OPAMP_FUZZ_SHIM_H_INCLUDED_ */
