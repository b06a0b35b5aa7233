/* lastcall doctor's look into interpreters (python3, php...): which database
 * drivers are installed, and how each reaches its client library. */
#ifndef LC_DOCTOR_DRIVERS_H
#define LC_DOCTOR_DRIVERS_H

#include <stdio.h>

/* Returns 1 if BASE (the program's name; PATH its file) names an interpreter
 * we know; its drivers are then printed to OUT. */
int interpreter_drivers(const char *path, const char *base, FILE *out);

#endif
