/* Where a signal may not stop a thread for good: the executable segments of
 * the objects whose code may leave libc's, the loader's or the allocator's
 * state half-changed when interrupted (libc, ld.so, an object that defines
 * malloc, lastcall itself), and which system calls leave libc holding nothing.
 * Used by safepoint.c: to divert (x86-64) and to park (every architecture
 * whose signal context it can read). */
#ifndef LC_UNSAFE_CODE_H
#define LC_UNSAFE_CODE_H

#include <stdint.h>

struct code_range {
    uintptr_t lo, hi;
    int libc; /* libc's own: safe inside an interrupted blocking system call */
};

/* Walks the loaded objects (dl_iterate_phdr): not from a signal handler, nor
 * under a lock of ours. *UNDER_VALGRIND is set when valgrind's preload is
 * there. Returns 1 when any range was found. Idempotent but not cheap. */
int unsafe_code_collect(int *under_valgrind);

/* The unsafe range holding PC, or NULL. Async-signal-safe. */
const struct code_range *unsafe_code_at(uintptr_t pc);

/* System calls a thread may sleep in while libc holds nothing that
 * pthread_create or malloc need (reads, writes, waits); and those plus the
 * quick calls that leave libc holding nothing once they return. */
int syscall_is_blocking(long nr);
int syscall_is_quick(long nr);

#endif
