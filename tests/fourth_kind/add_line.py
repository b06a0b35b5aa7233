#!/usr/bin/env python3
"""Prints the kind table (shim/runtime/kind_table.c) with one line added for
FakeDB, and checks that it is one line: the whole of what a fourth kind
changes outside its own file."""
import difflib
import sys

table = open(sys.argv[1]).read()
end = "    /* the end of the table */\n"
if table.count(end) != 1:
    sys.exit("add_line.py: no end-of-table line in " + sys.argv[1])
new = table.replace(end, "    X(lc_fakedb_kind)     \\\n" + end)
changed = [l for l in difflib.unified_diff(table.splitlines(), new.splitlines(), lineterm="", n=0)
           if l[:1] in "+-" and not l.startswith(("+++", "---"))]
if changed != ["+    X(lc_fakedb_kind)     \\"]:
    sys.exit("add_line.py: more than one line changed: %r" % changed)
sys.stdout.write(new)
