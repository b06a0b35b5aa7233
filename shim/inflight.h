/* Which handle each thread is inside, and the gate that stops new work.
 *
 * The query path must cost a few nanoseconds: no lock, no hash lookup. Each
 * thread owns a slot (found through initial-exec TLS) holding the handle it is
 * inside. The drain closes the gate, then scans the slots. The classic
 * store-then-load race between the two sides is closed asymmetrically: hooks
 * use only a compiler barrier, and the drain issues membarrier(2), which
 * forces a full barrier on every running thread of the process. */
#ifndef LC_INFLIGHT_H
#define LC_INFLIGHT_H

#include <stddef.h>
#include <stdint.h>

struct lc_slot {
    void *handle;              /* the handle this thread is inside, or NULL */
    struct lc_slot *next;      /* list of every slot ever made, never freed */
    int in_use;                /* a live thread owns it */
};

extern __thread struct lc_slot *lc_tls_slot __attribute__((tls_model("initial-exec")));
extern int lc_gate_closed;     /* nonzero while a drain runs or after it */
extern int lc_need_fence;      /* membarrier unavailable: hooks fence themselves */

struct lc_slot *inflight_slot_register(void);
/* The gate is closed: wait as the drain decides (see inflight.c). */
void gate_wait(void);

/* Returns 1 when this call is the outermost one on this thread (then pair it
 * with inflight_leave(s, 1)); 0 for a nested call (libpq calling itself). */
static inline int inflight_enter(struct lc_slot **sp, void *handle)
{
    struct lc_slot *s = lc_tls_slot;
    if (__builtin_expect(s == NULL, 0))
        s = inflight_slot_register();
    *sp = s;
    if (s == NULL || s->handle != NULL)
        return 0;
    __atomic_store_n(&s->handle, handle, __ATOMIC_RELAXED);
    if (__builtin_expect(lc_need_fence, 0))
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    else
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (__builtin_expect(__atomic_load_n(&lc_gate_closed, __ATOMIC_RELAXED), 0)) {
        __atomic_store_n(&s->handle, NULL, __ATOMIC_RELEASE);
        gate_wait();
        __atomic_store_n(&s->handle, handle, __ATOMIC_SEQ_CST);
    }
    return 1;
}

extern int lc_touch_enabled;   /* LASTCALL_LEAK_AGE: note each use */
void runtime_touch(void *handle);

static inline void inflight_leave(struct lc_slot *s, int outer)
{
    if (!outer)
        return;
    void *handle = s->handle;
    __atomic_store_n(&s->handle, NULL, __ATOMIC_RELEASE);
    if (__builtin_expect(lc_touch_enabled, 0))
        runtime_touch(handle);
    /* A call that was in flight when the drain began may finish, but its
     * thread must not run on into the program's own code. */
    if (__builtin_expect(__atomic_load_n(&lc_gate_closed, __ATOMIC_ACQUIRE), 0))
        gate_wait();
}

/* Is any thread inside HANDLE right now? */
int inflight_is_busy(const void *handle);

/* Drain side. */
enum lc_gate_mode { LC_GATE_EXIT = 1, LC_GATE_SIGNAL = 2 };
void gate_close(int mode, int64_t wait_until_ms);
/* Exit mode: gated calls go on (their sockets are closed, so they fail fast).
 * Signal mode: gated threads stay parked until the process dies. */
void gate_finish(void);
/* The thread running exit() must not be parked by its own atexit drain. */
void gate_set_exiting_thread(void);
/* Ask the kernel for the asymmetric barrier; falls back to fenced hooks. */
void inflight_prepare_barrier(void);

void inflight_atfork_child(void);

#endif
