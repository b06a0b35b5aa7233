/* ld.so's load and write locks: is a thread running a dlopen'd object's
 * constructor (the load lock held) or a dl_iterate_phdr callback (the write
 * lock)? Parked there by a signal, it would stop every loader call of the
 * drain and of every other thread for good (DESIGN.md, "The drain thread and
 * exit"). glibc on Linux only; elsewhere nothing is known and every answer
 * says so. */
#ifndef LC_LOADER_LOCKS_H
#define LC_LOADER_LOCKS_H

/* Finds the two locks. Once; not from a signal handler, nor under a lock of
 * ours (it calls dl_iterate_phdr). Returns 1 when they were found. */
int loader_locks_measure(void);

/* Is either lock held, by any thread? 1 when they were not found (a caller
 * that must be sure takes the unknown for held). Async-signal-safe. */
int loader_locks_busy(void);

/* Does this thread hold either lock? 0 when they were not found.
 * Async-signal-safe. */
int loader_locks_held_by_self(void);

#endif
