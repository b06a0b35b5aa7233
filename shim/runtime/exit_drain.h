/* The exit drain (exit_drain.c). */
#ifndef LC_EXIT_DRAIN_H
#define LC_EXIT_DRAIN_H

#include <stdint.h>

/* Puts the exit drain on exit()'s list (on_exit: the kernel's deadline must
 * end the process with exit()'s own status, which only on_exit hands over). */
void exit_drain_register(void);
/* Has this process's exit() reached the exit drain? */
int exit_drain_started(void);

#endif
