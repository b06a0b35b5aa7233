/* Kinds of connection are numbered by their line in the kind table
 * (runtime/kind_table.c), from 0; the registry and the reports keep their
 * per-kind counts in arrays of LC_KIND_MAX. */
#ifndef LC_KIND_ID_H
#define LC_KIND_ID_H

#define LC_KIND_MAX 8

#endif
