/* lastcall doctor: will lastcall see this program's connections, and why. */
#ifndef LC_DOCTOR_H
#define LC_DOCTOR_H

#include <stddef.h>
#include <stdio.h>

/* execvp's lookup: a name with a slash as is, otherwise through PATH. */
int doctor_resolve(const char *cmd, char *out, size_t size);

enum doctor_verdict { DOCTOR_YES = 0, DOCTOR_NO = 1, DOCTOR_NOT_FOUND = 2, DOCTOR_DEPENDS = 3 };
/* Prints the reasons to OUT; returns a verdict, used as the exit status. */
int doctor_run(const char *cmd, FILE *out);

#endif
