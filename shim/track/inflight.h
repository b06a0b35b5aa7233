/* Which handle each thread is inside, and the gate that stops new work.
 *
 * The query path must cost a few nanoseconds: no lock, no hash lookup, no
 * branch taken. Each thread's slot is a thread-local pointer (initial-exec
 * TLS, one %fs-relative access); threads register its address when they start
 * (pthread_create is interposed) so the drain can scan every slot. The
 * store-then-load race between a hook (store slot, load gate) and the drain
 * (store gate, load slots) is closed asymmetrically: hooks use only a compiler
 * barrier, and the drain issues membarrier(2), a full barrier on every running
 * thread. Everything rare (gate closed, no membarrier, leak-age tracking)
 * hides behind one flags word, tested once on the way in and once out. */
#ifndef LC_INFLIGHT_H
#define LC_INFLIGHT_H

#include <stddef.h>
#include <stdint.h>

extern __thread void *lc_inflight __attribute__((tls_model("initial-exec")));
/* The handles of the outer frames of nested calls on other handles (a notice
 * processor of connection A running PQexec(B)): outermost first. Only the
 * rare nested path writes it; the drain's snapshot reads it with the slot. A
 * nesting deeper than LC_OUTER_MAX keeps the count right but the frames past
 * the array unseen. */
#define LC_OUTER_MAX 7
struct lc_outer {
    unsigned n;
    void *h[LC_OUTER_MAX];
};
extern __thread struct lc_outer lc_outer __attribute__((tls_model("initial-exec")));
/* The slot value of a thread inside a connect call: there is no handle yet,
 * but the drain waits for it (in the grace period) and the signal handler
 * lets it finish rather than parking it mid-handshake. */
extern char lc_connecting;
#define LC_CONNECTING ((void *)&lc_connecting)
/* The slot value of a thread making lastcall's own calls into a library (the
 * drain reading a connection, a KILL connection): every call nested in it
 * passes, gate or not. */
extern char lc_own_call;
#define LC_OWN_CALL ((void *)&lc_own_call)

enum {
    LC_FLAG_GATE = 1,      /* a drain closed the gate */
    LC_FLAG_FENCE = 2,     /* no membarrier: hooks fence themselves */
    LC_FLAG_TOUCH = 4,     /* LASTCALL_LEAK_AGE: note each use */
};
extern unsigned lc_hook_flags;

/* One relaxed load of lc_hook_flags. On x86-64 it is spelled as one RIP-relative
 * instruction: left to itself GCC keeps the address in a callee-saved register
 * across the real call, which costs a push, a pop and a lea on every hook
 * (the benchmarks count instructions per call). */
static inline unsigned lc_flags(void)
{
#if defined(__x86_64__) && defined(__PIC__)
    unsigned v;
    __asm__ volatile("movl lc_hook_flags(%%rip), %0" : "=r"(v));
    return v;
#else
    return __atomic_load_n(&lc_hook_flags, __ATOMIC_RELAXED);
#endif
}
/* The same, as wide as a pointer (so it ORs with one without an extension). */
static inline uintptr_t lc_flags_wide(void)
{
#if defined(__x86_64__) && defined(__PIC__)
    uintptr_t v;
    __asm__ volatile("movl lc_hook_flags(%%rip), %k0" : "=r"(v));
    return v;
#else
    return __atomic_load_n(&lc_hook_flags, __ATOMIC_RELAXED);
#endif
}
extern int lc_gate_closed;     /* the gate alone, for the connect paths */

void inflight_slow_enter(void *handle);
void inflight_slow_leave(void);
/* A call made while this thread is already inside PREV: the same handle
 * (libpq calling its own exports) changes nothing; another one (a program
 * callback calling into a second connection) pushes PREV and goes through the
 * gate itself. */
void inflight_nested_enter(void *prev, void *handle);
/* INFLIGHT_LEAVE's rare cases: a nested call (PREV set), or flags. */
void inflight_leave_rare(void *prev, void *handle);
/* Set by redisFreeKeepFd's hook around the free: the program keeps the fd. */
extern __thread int lc_free_keeps_fd __attribute__((tls_model("initial-exec")));

/* Under ThreadSanitizer a pthread_create wrapper would run instrumented code
 * in the new thread before TSan has set it up, so TSan builds register each
 * thread on its first hook instead. */
#ifdef __SANITIZE_THREAD__
#define LC_REGISTER_THREAD() inflight_register_thread()
#else
#define LC_REGISTER_THREAD() ((void)0)
#endif

/* Marks this thread inside HANDLE for one call. The outermost call (the slot
 * empty) is the fast path; a nested one takes inflight_nested_enter, before
 * anything is stored, so the drain never sees the inner handle without the
 * outer one. Only an outermost call is parked on its way out. */
#define INFLIGHT_ENTER(handle)                                                                 \
    LC_REGISTER_THREAD();                                                                      \
    void *lc_prev_ = lc_inflight;                                                              \
    if (__builtin_expect(lc_prev_ != NULL, 0)) {                                               \
        inflight_nested_enter(lc_prev_, (void *)(handle));                                     \
    } else {                                                                                   \
        __atomic_store_n(&lc_inflight, (void *)(handle), __ATOMIC_RELAXED);                    \
        __atomic_signal_fence(__ATOMIC_SEQ_CST);                                               \
        if (__builtin_expect(lc_flags() != 0, 0))                                              \
            inflight_slow_enter((void *)(handle));                                             \
    }

/* The previous value goes back first (for a nested call, the outer handle
 * before it leaves the stack); one OR folds "nested" into the flags test. */
#define INFLIGHT_LEAVE(handle)                                                                 \
    __atomic_store_n(&lc_inflight, lc_prev_, __ATOMIC_RELEASE);                                \
    if (__builtin_expect((lc_flags_wide() | (uintptr_t)lc_prev_) != 0, 0))                     \
        inflight_leave_rare(lc_prev_, (void *)(handle))

/* INFLIGHT_ENTER, STMT, INFLIGHT_LEAVE with STMT written twice: the outermost
 * call (the fast path) then needs no register for the previous value and
 * empties the slot with a constant, as LC_TRACKED_CALL_HOOK does. For hooks
 * that cannot forward their arguments (variadic) and are hot. */
#define INFLIGHT_CALL(handle, stmt)                                                            \
    do {                                                                                       \
        LC_REGISTER_THREAD();                                                                  \
        if (__builtin_expect(lc_inflight != NULL, 0)) {                                        \
            void *lc_outer_h_ = lc_inflight;                                                   \
            inflight_nested_enter(lc_outer_h_, (void *)(handle));                              \
            stmt;                                                                              \
            __atomic_store_n(&lc_inflight, lc_outer_h_, __ATOMIC_RELEASE);                     \
            inflight_leave_rare(lc_outer_h_, (void *)(handle));                                \
        } else {                                                                               \
            __atomic_store_n(&lc_inflight, (void *)(handle), __ATOMIC_RELAXED);                \
            __atomic_signal_fence(__ATOMIC_SEQ_CST);                                           \
            if (__builtin_expect(lc_flags() != 0, 0))                                          \
                inflight_slow_enter((void *)(handle));                                         \
            stmt;                                                                              \
            __atomic_store_n(&lc_inflight, NULL, __ATOMIC_RELEASE);                            \
            if (__builtin_expect(lc_flags() != 0, 0))                                          \
                inflight_slow_leave();                                                         \
        }                                                                                      \
    } while (0)

/* One query/command hook: HANDLE is the expression naming the connection
 * among PARAMS; LOOKUP finds the real NAME. The real function is reached
 * through a pointer that starts at a resolver stub (the first call looks the
 * symbol up and replaces the pointer), so the hot path has no "resolved yet?"
 * branch; everything rare goes to the cold slow_ twin. */
#define LC_TRACKED_CALL_HOOK(lookup, ret, failval, name, handle, params, args)                 \
    static ret resolve_##name params;                                                          \
    static ret (*real_##name) params = resolve_##name;                                         \
    static ret resolve_##name params                                                           \
    {                                                                                          \
        ret (*f) params = lookup(name);                                                        \
        if (f == NULL)                                                                         \
            return failval;                                                                    \
        __atomic_store_n(&real_##name, f, __ATOMIC_RELEASE);                                   \
        return f args;                                                                         \
    }                                                                                          \
    /* Anything rare (a drain, no membarrier, leak-age tracking). */                           \
    static __attribute__((noinline, cold)) ret slow_##name params                              \
    {                                                                                          \
        INFLIGHT_ENTER(handle);                                                                \
        ret r = __atomic_load_n(&real_##name, __ATOMIC_RELAXED) args;                          \
        INFLIGHT_LEAVE(handle);                                                                \
        return r;                                                                              \
    }                                                                                          \
    LC_EXPORT ret name params                                                                  \
    {                                                                                          \
        LC_REGISTER_THREAD();                                                                  \
        if (__builtin_expect(lc_inflight != NULL, 0))                                          \
            return slow_##name args; /* nested */                                              \
        __atomic_store_n(&lc_inflight, (void *)handle, __ATOMIC_RELAXED);                      \
        __atomic_signal_fence(__ATOMIC_SEQ_CST);                                               \
        if (__builtin_expect(lc_flags() != 0, 0)) {                                            \
            __atomic_store_n(&lc_inflight, NULL, __ATOMIC_RELAXED);                            \
            return slow_##name args;                                                           \
        }                                                                                      \
        ret r = __atomic_load_n(&real_##name, __ATOMIC_RELAXED) args;                          \
        __atomic_store_n(&lc_inflight, NULL, __ATOMIC_RELEASE);                                \
        if (__builtin_expect(lc_flags() != 0, 0))                                              \
            inflight_slow_leave();                                                             \
        return r;                                                                              \
    }

/* Around lastcall's own calls into a library: returns what to give back to
 * inflight_own_end. A thread already inside a handle keeps it. */
static inline void *inflight_own_begin(void)
{
    void *prev = lc_inflight;
    if (prev == NULL)
        __atomic_store_n(&lc_inflight, LC_OWN_CALL, __ATOMIC_RELAXED);
    return prev;
}
static inline void inflight_own_end(void *prev)
{
    if (prev == NULL)
        __atomic_store_n(&lc_inflight, NULL, __ATOMIC_RELEASE);
}

/* While a free call waits for the drain, it is not inside the library. */
static inline void *inflight_suspend(void)
{
    void *h = lc_inflight;
    __atomic_store_n(&lc_inflight, NULL, __ATOMIC_RELEASE);
    return h;
}
static inline void inflight_resume(void *h)
{
    __atomic_store_n(&lc_inflight, h, __ATOMIC_SEQ_CST);
}

/* The calling thread's slot joins the list the drain scans (idempotent). */
void inflight_register_thread(void);
/* ... and leaves it as the thread ends. */
void inflight_unregister_thread(void);

/* Copies the handles threads are inside right now (every frame of every
 * thread: the innermost and the outer ones) into OUT, at most MAX of them;
 * returns how many there are, which may be more than MAX: then grow OUT and
 * ask again. */
size_t inflight_snapshot_all(void **out, size_t max);
/* The same, truncated: returns how many were copied (at most MAX). For
 * reports, where a busy connection past MAX shows as idle. */
size_t inflight_snapshot(void **out, size_t max);
int inflight_contains(void *const *snap, size_t n, const void *handle);

/* The gate wait: see inflight.c. */
void gate_wait(void);

/* Drain side. */
enum lc_gate_mode { LC_GATE_EXIT = 1, LC_GATE_SIGNAL = 2 };
/* Signal mode: gated threads stay parked until the process dies. Exit mode:
 * until WAIT_UNTIL_MS (past the kernel's deadline, so in practice until the
 * exit ends the process), then their calls go on and fail fast on closed
 * sockets: let go at the drain's end, a thread ran the program's code on and
 * could end the process with another status than exit()'s. */
void gate_close(int mode, int64_t wait_until_ms);
/* The thread running exit() must not be parked by its own atexit drain. */
void gate_set_exiting_thread(void);
/* Ask the kernel for the asymmetric barrier; falls back to fenced hooks. */
void inflight_prepare_barrier(void);
void inflight_set_touch(int on);

void inflight_atfork_prepare(void);
void inflight_atfork_parent(void);
void inflight_atfork_child(void);

#endif
