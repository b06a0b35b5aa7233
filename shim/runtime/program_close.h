/* The program's own close of a tracked handle (program_close.c). */
#ifndef LC_PROGRAM_CLOSE_H
#define LC_PROGRAM_CLOSE_H

#include <stdint.h>

struct lc_entry;

/* The program frees HANDLE (see core/upcalls.h's free_tracked). */
int runtime_free_tracked(void *handle, int (*do_free)(void *), struct lc_entry *info,
                         int *tracked);
/* LASTCALL_LEAK_AGE's "used now" (core/upcalls.h's touch). */
void runtime_touch(void *handle);
/* close events (LASTCALL_LOG=debug). */
void runtime_log_close(const struct lc_entry *info);

#endif
