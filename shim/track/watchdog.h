/* The watchdog: bounds a library call that may block. */
#ifndef LC_WATCHDOG_H
#define LC_WATCHDOG_H

#include <stdint.h>

/* A libpq/hiredis call that may block (blocking-mode libpq flushes): while it
 * runs, a watchdog thread shuts FD down at UNTIL_MS, which makes the call
 * return. Returns 0 when armed (then call bounded_end), -1 when it cannot be
 * bounded (do not make the call). bounded_end returns 1 if the watchdog fired. */
int bounded_begin(int fd, int64_t until_ms);
int bounded_end(int slot);

#endif
