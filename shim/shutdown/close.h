/* Closing one connection the way the drain would, outside a drain: the
 * program's own close once shutdown has begun, and a connect that returned
 * after the gate closed (close.c). */
#ifndef LC_SHUTDOWN_CLOSE_H
#define LC_SHUTDOWN_CLOSE_H

#include <stdint.h>

struct lc_entry;

/* The program frees a connection it owns after shutdown began (a managed
 * signal arrived, or the exit drain runs): close it as the drain would
 * (cancel a running query, end a COPY IN, flush buffered output, wait until
 * the server has read it), bounded by UNTIL_MS. KEEP_FD: the program keeps
 * the socket (redisFreeKeepFd): flush only. Runs on the program's thread
 * before the real free. */
/* Returns 1 when a cancel request for it was abandoned at UNTIL_MS: its
 * PGcancel is still in use and must not be freed. */
int drain_close_by_program(struct lc_entry *info, int keep_fd, int64_t until_ms);

/* A connect that was under way when the gate closed has just returned HANDLE
 * (tracked by now): close it the way the drain would, at once. */
void drain_close_late(void *handle);

#endif
