#!/bin/sh
# Prints src/lua/NAME.lua as Redis runs it: each line "--@include
# lib/FILE.lua" replaced by that file (code that several scripts share;
# Redis runs each script on its own).  Fails on a file it cannot include.

awk -v dir="$(dirname "$1")" '
    /^--@include / {
        file = dir "/" $2
        n = 0
        while ((r = (getline line < file)) > 0) {
            print line
            n++
        }
        if (r < 0 || n == 0) {
            print "expand.sh: cannot include " file > "/dev/stderr"
            exit 1
        }
        close(file)
        next
    }
    { print }
' "$1"
