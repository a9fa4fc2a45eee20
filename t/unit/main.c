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


/*
 * Each suite is linked in for real (no weak stand-in: a suite whose file
 * is not linked fails the build), and a suite that ran no check at all
 * counts as failed, so that a suite emptied by mistake cannot pass.
 */

static int
unit_run(const char *name, int (*suite)(void))
{
    int  before, failures;

    before = unit_passed + unit_failed;

    failures = suite();

    if (unit_passed + unit_failed == before) {
        fprintf(stderr, "FAIL %s: the suite ran no checks\n", name);
        unit_failed++;
        return failures + 1;
    }

    return failures;
}


int
main(void)
{
    int  failures;

    failures = 0;

    failures += unit_run("wsframe", unit_wsframe);
    failures += unit_run("uid", unit_uid);

    printf("%d passed, %d failed\n", unit_passed, unit_failed);

    return (failures || unit_failed) ? 1 : 0;
}
