/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * A minimal unit test harness: each suite is a function returning its
 * number of failures; CHECK() counts passes and failures for the closing
 * summary line that main.c prints.
 */

#ifndef _UNIT_H_INCLUDED_
#define _UNIT_H_INCLUDED_


#include <stdio.h>


extern int  unit_passed;
extern int  unit_failed;


#define UNIT_BEGIN(name)                                                     \
    const char  *unit_suite_ = (name);                                       \
    int          unit_failures_ = 0

#define CHECK(cond, what)                                                    \
    do {                                                                     \
        if (cond) {                                                          \
            unit_passed++;                                                   \
                                                                             \
        } else {                                                             \
            unit_failed++;                                                   \
            unit_failures_++;                                                \
            fprintf(stderr, "FAIL %s: %s (%s:%d)\n", unit_suite_, (what),    \
                    __FILE__, __LINE__);                                     \
        }                                                                    \
    } while (0)

#define UNIT_END()                                                           \
    return unit_failures_

/* for a suite split into void helpers: adds their failures to *(n) */
#define UNIT_END_INTO(n)                                                     \
    *(n) += unit_failures_


int unit_wsframe(void);
int unit_uid(void);


#endif /* _UNIT_H_INCLUDED_ */
