#define _GNU_SOURCE
#include "track/inflight.h"

#include <errno.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/process.h"
#include "platform/symbols.h"

__thread void *lc_inflight __attribute__((tls_model("initial-exec")));
__thread struct lc_outer lc_outer __attribute__((tls_model("initial-exec")));
__thread int lc_free_keeps_fd __attribute__((tls_model("initial-exec")));
char lc_connecting;
char lc_own_call;
/* No FENCE until a connect finds membarrier missing: before the first tracked
 * connect no drain can start, so no hook needs to fence (and with
 * LASTCALL_DISABLE=1, or in a process that never connects, every hook stays
 * on the fast path). */
unsigned lc_hook_flags;
int lc_gate_closed;

/* Registered slots: the address of each live thread's lc_inflight. */
struct slot_ref {
    void **slot;
    struct lc_outer *outer;
    struct slot_ref *next;
};
static struct slot_ref *slots;
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread int registered __attribute__((tls_model("initial-exec")));
static struct slot_ref first; /* the first registered thread's entry, never freed */
static int first_used;

static struct slot_ref *static_ref(void)
{
    return &first;
}

static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static int gate_mode;          /* enum lc_gate_mode while closed */
static int64_t gate_wait_until_ms;
static pthread_t exiting_thread;
static int exiting_thread_set;

static void set_flag(unsigned flag, int on)
{
    if (on)
        __atomic_or_fetch(&lc_hook_flags, flag, __ATOMIC_SEQ_CST);
    else
        __atomic_and_fetch(&lc_hook_flags, ~flag, __ATOMIC_SEQ_CST);
}


#ifdef __SANITIZE_THREAD__
static pthread_key_t exit_key;

static void on_thread_exit(void *unused)
{
    (void)unused;
    inflight_unregister_thread();
}

static void make_exit_key(void)
{
    pthread_key_create(&exit_key, on_thread_exit);
}
#endif

void inflight_register_thread(void)
{
    /* The first thread (main, from our constructor) uses a static entry: a
     * process that never mallocs (a shell builtin, /bin/true) must not start
     * the allocator on our account. */
    if (registered)
        return;
    struct slot_ref *r = __atomic_exchange_n(&first_used, 1, __ATOMIC_ACQ_REL) ? malloc(sizeof *r)
                                                                                : &first;
    if (r == NULL)
        return;
    r->slot = &lc_inflight;
    r->outer = &lc_outer;
#ifdef __SANITIZE_THREAD__
    /* No trampoline under TSan: a key destructor takes the slot off the list. */
    static pthread_once_t key_once = PTHREAD_ONCE_INIT;
    pthread_once(&key_once, make_exit_key);
    pthread_setspecific(exit_key, r);
#endif
    pthread_mutex_lock(&slots_lock);
    r->next = slots;
    slots = r;
    pthread_mutex_unlock(&slots_lock);
    registered = 1;
}

static void free_ref(struct slot_ref *r)
{
    if (r != static_ref())
        free(r);
}

void inflight_unregister_thread(void)
{
    if (!registered)
        return;
    pthread_mutex_lock(&slots_lock);
    for (struct slot_ref **p = &slots; *p; p = &(*p)->next) {
        if ((*p)->slot == &lc_inflight) {
            struct slot_ref *dead = *p;
            *p = dead->next;
            free_ref(dead);
            break;
        }
    }
    pthread_mutex_unlock(&slots_lock);
    registered = 0;
}

static void snap_put(void **out, size_t max, size_t *n, void *h)
{
    if (h == NULL)
        return;
    if (*n < max)
        out[*n] = h;
    (*n)++;
}

/* Per thread: the slot, its outer frames, the slot again. A nested call
 * pushes the outer handle before it stores the inner one, and on its way out
 * stores the outer handle back before it pops it, so between the two reads
 * of the slot every handle the thread is inside is seen at least once. */
size_t inflight_snapshot_all(void **out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&slots_lock);
    for (struct slot_ref *r = slots; r; r = r->next) {
        void *first_read = __atomic_load_n(r->slot, __ATOMIC_ACQUIRE);
        snap_put(out, max, &n, first_read);
        unsigned depth = __atomic_load_n(&r->outer->n, __ATOMIC_ACQUIRE);
        if (depth > LC_OUTER_MAX)
            depth = LC_OUTER_MAX;
        for (unsigned i = 0; i < depth; i++)
            snap_put(out, max, &n, __atomic_load_n(&r->outer->h[i], __ATOMIC_RELAXED));
        void *second_read = __atomic_load_n(r->slot, __ATOMIC_ACQUIRE);
        if (second_read != first_read)
            snap_put(out, max, &n, second_read);
    }
    pthread_mutex_unlock(&slots_lock);
    return n;
}

size_t inflight_snapshot(void **out, size_t max)
{
    size_t n = inflight_snapshot_all(out, max);
    return n < max ? n : max;
}

int inflight_contains(void *const *snap, size_t n, const void *handle)
{
    for (size_t i = 0; i < n; i++)
        if (snap[i] == handle)
            return 1;
    return 0;
}

/* ---- the asymmetric barrier ---- */

void inflight_prepare_barrier(void)
{
    int ok = syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
    set_flag(LC_FLAG_FENCE, !ok);
}

static void full_barrier_everywhere(void)
{
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0)
        return;
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0)
        return;
    /* No membarrier at all: hooks fence themselves (LC_FLAG_FENCE); a short
     * sleep lets any store still in a store buffer land. */
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
}

void inflight_set_touch(int on)
{
    set_flag(LC_FLAG_TOUCH, on);
}

/* ---- slow paths ---- */

/* After the slot is stored: a full barrier if the hooks fence themselves;
 * returns the flags as read after it. */
static unsigned flags_after_store(void)
{
    unsigned flags = __atomic_load_n(&lc_hook_flags, __ATOMIC_RELAXED);
    if (flags & LC_FLAG_FENCE) {
        /* A full barrier between our slot store and the gate load. A
         * sequentially consistent read-modify-write is one on x86-64 (a locked
         * instruction) and, unlike a bare fence, ThreadSanitizer models it. */
        flags = __atomic_fetch_or(&lc_hook_flags, 0, __ATOMIC_SEQ_CST);
    }
    return flags;
}

/* The gate is closed: wait with the slot showing OUTER (NULL for an
 * outermost call, the outer frame's handle for a nested one: that call can
 * never progress now, and the drain must know it is inside it). */
static void wait_at_gate(void *outer, void *handle)
{
    __atomic_store_n(&lc_inflight, outer, __ATOMIC_RELEASE);
    gate_wait();
    __atomic_store_n(&lc_inflight, handle, __ATOMIC_SEQ_CST);
}

void inflight_slow_enter(void *handle)
{
    unsigned flags = flags_after_store();
    if (flags & LC_FLAG_TOUCH)
        lc_up.touch(handle); /* a use counts from its start */
    if (flags & LC_FLAG_GATE)
        wait_at_gate(NULL, handle);
}

void inflight_slow_leave(void)
{
    unsigned flags = __atomic_load_n(&lc_hook_flags, __ATOMIC_ACQUIRE);
    /* A call that was in flight when the drain began may finish, but its
     * thread must not run on into the program's own code. */
    if (flags & LC_FLAG_GATE)
        gate_wait();
}

/* A call on HANDLE made from inside a call on PREV: libpq calling its own
 * exports (the same handle: nothing changes), or the program's code run by the
 * library (a notice processor, a hiredis callback) calling into another
 * connection. That one is a new call like any other: it goes through the gate,
 * and the outer handle stays visible to the drain, pushed before the inner one
 * is stored. */
void inflight_nested_enter(void *prev, void *handle)
{
    if (prev == handle || prev == LC_OWN_CALL)
        return;
    unsigned n = lc_outer.n;
    if (n < LC_OUTER_MAX)
        __atomic_store_n(&lc_outer.h[n], prev, __ATOMIC_RELAXED);
    __atomic_store_n(&lc_outer.n, n + 1, __ATOMIC_RELEASE);
    __atomic_store_n(&lc_inflight, handle, __ATOMIC_RELEASE);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    unsigned flags = flags_after_store();
    if (flags & LC_FLAG_TOUCH)
        lc_up.touch(handle);
    if (flags & LC_FLAG_GATE)
        wait_at_gate(prev, handle);
}

void inflight_leave_rare(void *prev, void *handle)
{
    if (prev == NULL) {
        inflight_slow_leave();
        return;
    }
    if (prev == handle || prev == LC_OWN_CALL)
        return;
    /* The outer handle is back in the slot (INFLIGHT_LEAVE stored it):
     * only now does it leave the stack. */
    unsigned n = lc_outer.n;
    __atomic_store_n(&lc_outer.n, n > 0 ? n - 1 : 0, __ATOMIC_RELEASE);
}

/* ---- the gate ---- */

/* Lock-free: the atexit drain may run inside a signal handler. */
void gate_set_exiting_thread(void)
{
    __atomic_store_n(&exiting_thread, pthread_self(), __ATOMIC_RELEASE);
    __atomic_store_n(&exiting_thread_set, 1, __ATOMIC_RELEASE);
}

void gate_close(int mode, int64_t wait_until_ms)
{
    pthread_mutex_lock(&gate_lock);
    gate_mode = mode;
    gate_wait_until_ms = wait_until_ms;
    pthread_mutex_unlock(&gate_lock);
    __atomic_store_n(&lc_gate_closed, 1, __ATOMIC_SEQ_CST);
    set_flag(LC_FLAG_GATE, 1);
    full_barrier_everywhere();
}

void gate_wait(void)
{
    pthread_mutex_lock(&gate_lock);
    if (gate_mode == LC_GATE_EXIT && __atomic_load_n(&exiting_thread_set, __ATOMIC_ACQUIRE) &&
        pthread_equal(__atomic_load_n(&exiting_thread, __ATOMIC_ACQUIRE), pthread_self())) {
        pthread_mutex_unlock(&gate_lock);
        return;
    }
    for (;;) {
        if (gate_mode == LC_GATE_EXIT) {
            /* Not when the drain is done: another thread is running exit(),
             * and this one, let go, would run the program's code on (return
             * from main, call exit() itself) and could end the process with
             * another status than exit()'s. It waits, as it would have
             * waited in its call without lastcall, while exit() finishes; the
             * kernel's deadline ends the process before this bound. Bounded
             * all the same: under the sanitizers the timer covers only the
             * drain, and an atexit handler may join this thread. */
            int64_t left = gate_wait_until_ms - lc_now_ms();
            if (left <= 0)
                break;
            struct timespec ts;
            lc_abstime_after_ms(left, &ts);
            pthread_cond_timedwait(&gate_cond, &gate_lock, &ts);
        } else {
            /* Signal mode: the process dies when the drain ends. */
            pthread_cond_wait(&gate_cond, &gate_lock);
        }
    }
    pthread_mutex_unlock(&gate_lock);
}

void inflight_atfork_prepare(void)
{
    pthread_mutex_lock(&slots_lock);
}

void inflight_atfork_parent(void)
{
    pthread_mutex_unlock(&slots_lock);
}

void inflight_atfork_child(void)
{
    /* Only the forking thread lives on in the child; the other slots are
     * memory of threads that do not exist here. */
    struct slot_ref *mine = NULL;
    for (struct slot_ref *r = slots, *next; r; r = next) {
        next = r->next;
        if (r->slot == &lc_inflight)
            mine = r;
        else
            free_ref(r);
    }
    slots = mine;
    if (mine)
        mine->next = NULL;
    registered = mine != NULL;
    /* Held by this very thread since atfork_prepare: unlocked, not re-made
     * (re-initialising a held mutex is what ThreadSanitizer rightly flags). */
    pthread_mutex_unlock(&slots_lock);
    /* May have been held by a thread that does not exist in the child. */
    pthread_mutex_init(&gate_lock, NULL);
    pthread_cond_init(&gate_cond, NULL);
    __atomic_store_n(&lc_gate_closed, 0, __ATOMIC_RELEASE);
    gate_mode = 0;
    exiting_thread_set = 0;
    /* The child's drains cover only its own connections, and its first
     * connect registers membarrier afresh (runtime_on_connect). */
    set_flag(LC_FLAG_GATE, 0);
    set_flag(LC_FLAG_FENCE, 0);
}
