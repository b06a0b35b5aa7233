/* The per-process drain thread (drain_thread.c). */
#ifndef LC_DRAIN_THREAD_H
#define LC_DRAIN_THREAD_H

#include <stdint.h>

/* Called after every tracked connect: makes this process's drain thread and
 * registers the exit drain with REGISTER_EXIT (again after OpenSSL's atexit
 * when USES_SSL, so that ours runs before it). */
void drain_thread_on_connect(int uses_ssl, void (*register_exit)(void));

/* From a signal handler: ask the drain thread for a status snapshot.
 * Async-signal-safe. */
void runtime_request_status(void);
/* From a signal handler: ask the drain thread to answer `lastcall status`
 * (status_protocol.h). Async-signal-safe. Returns -1 when this process has no
 * drain thread. */
int runtime_request_remote_status(uint64_t token);

/* Does this process start its drain thread only when a drain needs it
 * (single-threaded so far, see safepoint.h)? Async-signal-safe. */
int runtime_drain_thread_is_lazy(void);
/* Starts this process's drain thread if it has none. Not from a signal
 * handler. Returns 0 when the thread runs. */
int runtime_start_drain_thread(void);
/* Asks the drain thread for a signal drain of SIG whose deadline counts from
 * START_MS. Async-signal-safe. Returns 0, or -1 without a drain thread. */
int runtime_post_signal_drain(int sig, int64_t start_ms);
/* The program is about to create a thread of its own. */
void runtime_on_program_thread(void);

/* Is a drain under way in this process? (async-signal-safe) */
int runtime_drain_requested(void);
/* From a signal handler: wake the drain thread. Returns 0, or -1 when this
 * process has no drain thread (then the caller acts as without lastcall). */
int runtime_request_signal_drain(int sig);

/* The fork handlers' share: the drain thread's lock, and a child's fresh
 * start (the parent's thread did not come along). */
void drain_thread_atfork_prepare(void);
void drain_thread_atfork_parent(void);
void drain_thread_atfork_child(void);
/* The exit drain's: a drain is under way from now on; wake the drain thread
 * for it (-1 without one); the pipe its end is announced on. */
void drain_thread_mark_requested(void);
int drain_thread_post_exit(int64_t start_ms);
int drain_thread_done_fd(void);

#endif
