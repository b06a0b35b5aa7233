/* Running lastcall's own code on a thread a signal interrupted, outside signal
 * context, when the interrupted code is at a point where libc, the loader and
 * the allocator are consistent (a "safe point").
 *
 * Why: a single-threaded program keeps glibc's malloc in its lock-free
 * single-threaded mode only while no thread exists, so lastcall starts its
 * drain thread only when a drain needs it. A signal handler must not create
 * it (pthread_create is not async-signal-safe), so the handler checks where
 * the thread was interrupted and, at a safe point, edits its own ucontext so
 * that the thread, once the handler has returned, runs a function of ours on
 * its own stack below the signal frame, every signal blocked. That function
 * may later resume the interrupted code exactly as the handler's return
 * would have (the kernel restores it from the preserved frame). At an unsafe
 * point (inside libc, the loader, the allocator or lastcall, other than in an
 * interrupted blocking system call) the handler returns and a one-shot timer
 * delivers the signal again a moment later.
 *
 * x86-64 only; elsewhere safepoint_prepare() says no and the drain thread
 * starts at the first connect as before. */
#ifndef LC_SAFEPOINT_H
#define LC_SAFEPOINT_H

#include <signal.h>
#include <stdint.h>

/* Learns which code is unsafe to leave (libc, ld.so, the malloc provider,
 * lastcall). Not from a signal handler; idempotent. Returns 1 when threads
 * can be diverted here: x86-64, glibc's signal frames, not under valgrind
 * (whose signal frames are its own). */
int safepoint_prepare(void);

/* Was the thread interrupted at a safe point? UCTX and INFO are the
 * handler's arguments for this very delivery. Async-signal-safe. */
int safepoint_is_safe(const void *uctx, const siginfo_t *info);

/* From a signal handler: when it returns, the thread runs FN() (outside
 * signal context, every signal but the synchronous faults blocked) instead of
 * the interrupted code. When FN returns, the interrupted code goes on as if
 * the handler had just returned (registers, signal mask, an interrupted
 * system call's restart); FN may also never return. Returns 0, or -1 when a
 * diversion is already pending. Async-signal-safe. */
int safepoint_divert(void *uctx, void (*fn)(void));

/* Delivers SIG to this thread again in DELAY_US, marked as a retry.
 * Async-signal-safe. Returns 0, or -1 when no timer can be had. */
int safepoint_retry(int sig, long delay_us);
/* Is INFO such a retry? Async-signal-safe. */
int safepoint_is_retry(const siginfo_t *info);

/* Does this thread hold ld.so's load or write lock (it runs a dlopen'd
 * object's constructor, or a dl_iterate_phdr callback)? 0 when that cannot be
 * known (safepoint_prepare found no loader locks). Async-signal-safe. */
int safepoint_holds_loader_lock(void);
/* Was the thread interrupted where libc, the loader and the allocator hold
 * nothing of its (the innermost program counter alone)? 1 when that cannot
 * be known. Async-signal-safe. */
int safepoint_pc_is_safe(const void *uctx, const siginfo_t *info);
/* Delivers SIG to this thread in DELAY_US on a timer of the thread's own,
 * marked as a park retry. Async-signal-safe. Returns 0, or -1. */
int safepoint_park_retry(int sig, long delay_us);
int safepoint_is_park_retry(const siginfo_t *info);

/* For the atexit drain: 0 when this thread is running a signal handler (a
 * program's handler that called exit()) whose interrupted code was at an
 * unsafe point; 1 otherwise (not in a handler, or at a safe point). */
int safepoint_exit_is_safe(void);

#endif
