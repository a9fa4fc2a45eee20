/*
 * Copyright (C) ngx_http_opamp_module authors
 *
 * Runs every unit test suite and prints one closing line,
 * "N passed, N failed"; the exit status is non-zero on any failure.
 */

#include <stdio.h>

#include "unit.h"


int  unit_passed;
int  unit_failed;


/* replaced by the real suite when t/unit/test_uid.c is linked in */

__attribute__((weak)) int
unit_uid(void)
{
    return 0;
}


int
main(void)
{
    int  failures;

    failures = 0;

    failures += unit_wsframe();
    failures += unit_uid();

    printf("%d passed, %d failed\n", unit_passed, unit_failed);

    return (failures || unit_failed) ? 1 : 0;
}
