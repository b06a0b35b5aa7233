#define _GNU_SOURCE
#include "inflight.h"

#include <linux/membarrier.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "lc.h"

__thread struct lc_slot *lc_tls_slot __attribute__((tls_model("initial-exec")));
int lc_gate_closed;
int lc_need_fence = 1; /* until membarrier is known to work */

static struct lc_slot *slots_head;
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static pthread_key_t slot_key;
static int key_ok;

static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static int gate_mode;          /* enum lc_gate_mode while closed */
static int gate_done;          /* the drain finished */
static int64_t gate_wait_until_ms;
static pthread_t exiting_thread;
static int exiting_thread_set;

static void slot_release(void *p)
{
    struct lc_slot *s = p;
    __atomic_store_n(&s->handle, NULL, __ATOMIC_RELEASE);
    __atomic_store_n(&s->in_use, 0, __ATOMIC_RELEASE);
}

static void make_key(void)
{
    key_ok = pthread_key_create(&slot_key, slot_release) == 0;
}

struct lc_slot *inflight_slot_register(void)
{
    pthread_once(&key_once, make_key);
    pthread_mutex_lock(&slots_lock);
    struct lc_slot *s;
    for (s = slots_head; s; s = s->next)
        if (!__atomic_load_n(&s->in_use, __ATOMIC_ACQUIRE))
            break;
    if (s == NULL) {
        s = calloc(1, sizeof *s);
        if (s) {
            s->next = slots_head;
            __atomic_store_n(&slots_head, s, __ATOMIC_RELEASE);
        }
    }
    if (s) {
        s->handle = NULL;
        __atomic_store_n(&s->in_use, 1, __ATOMIC_RELEASE);
        if (key_ok)
            pthread_setspecific(slot_key, s);
        lc_tls_slot = s;
    }
    pthread_mutex_unlock(&slots_lock);
    return s;
}

int inflight_is_busy(const void *handle)
{
    for (struct lc_slot *s = __atomic_load_n(&slots_head, __ATOMIC_ACQUIRE); s; s = s->next)
        if (__atomic_load_n(&s->handle, __ATOMIC_ACQUIRE) == handle)
            return 1;
    return 0;
}

void inflight_prepare_barrier(void)
{
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0)
        __atomic_store_n(&lc_need_fence, 0, __ATOMIC_RELEASE);
    else
        __atomic_store_n(&lc_need_fence, 1, __ATOMIC_RELEASE);
}

static void full_barrier_everywhere(void)
{
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0)
        return;
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0)
        return;
    /* No membarrier at all: hooks were told to fence (lc_need_fence) unless a
     * registration in this very process worked; a short sleep lets any store
     * still in a store buffer land. */
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
}

void gate_set_exiting_thread(void)
{
    pthread_mutex_lock(&gate_lock);
    exiting_thread = pthread_self();
    exiting_thread_set = 1;
    pthread_mutex_unlock(&gate_lock);
}

void gate_close(int mode, int64_t wait_until_ms)
{
    pthread_mutex_lock(&gate_lock);
    gate_mode = mode;
    gate_done = 0;
    gate_wait_until_ms = wait_until_ms;
    pthread_mutex_unlock(&gate_lock);
    __atomic_store_n(&lc_gate_closed, 1, __ATOMIC_SEQ_CST);
    full_barrier_everywhere();
}

void gate_finish(void)
{
    pthread_mutex_lock(&gate_lock);
    gate_done = 1;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_lock);
}

void gate_wait(void)
{
    pthread_mutex_lock(&gate_lock);
    if (gate_mode == LC_GATE_EXIT && exiting_thread_set &&
        pthread_equal(exiting_thread, pthread_self())) {
        pthread_mutex_unlock(&gate_lock);
        return;
    }
    for (;;) {
        if (gate_mode == LC_GATE_EXIT && gate_done)
            break;
        if (gate_mode == LC_GATE_EXIT) {
            /* Bounded: even if the drain thread were lost, the exit goes on. */
            int64_t left = gate_wait_until_ms - lc_now_ms();
            if (left <= 0)
                break;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += left / 1000;
            ts.tv_nsec += (left % 1000) * 1000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&gate_cond, &gate_lock, &ts);
        } else {
            /* Signal mode: the process dies when the drain ends. */
            pthread_cond_wait(&gate_cond, &gate_lock);
        }
    }
    pthread_mutex_unlock(&gate_lock);
}

void inflight_atfork_child(void)
{
    /* Only the forking thread lives on in the child. */
    struct lc_slot *mine = lc_tls_slot;
    for (struct lc_slot *s = slots_head; s; s = s->next) {
        if (s == mine)
            continue;
        s->handle = NULL;
        s->in_use = 0;
    }
    pthread_mutex_init(&slots_lock, NULL);
    pthread_mutex_init(&gate_lock, NULL);
    pthread_cond_init(&gate_cond, NULL);
    __atomic_store_n(&lc_gate_closed, 0, __ATOMIC_RELEASE);
    gate_mode = 0;
    gate_done = 0;
    exiting_thread_set = 0;
    /* membarrier registration does not survive fork; fence until re-registered. */
    __atomic_store_n(&lc_need_fence, 1, __ATOMIC_RELEASE);
}
