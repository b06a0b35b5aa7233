/* lastcall's own threads (the drain thread, cancel helpers, the deadline
 * watchdog, a status answer): detached, and with every signal blocked, so no
 * signal of the program's ever runs on them. */
#ifndef LC_THREADS_H
#define LC_THREADS_H

#include <stddef.h>

/* Starts FN(ARG) on such a thread with a STACK_SIZE-byte stack. Returns 0, or
 * pthread_create's error. */
int lc_helper_thread(void *(*fn)(void *), void *arg, size_t stack_size);

#endif
