#define _GNU_SOURCE
#include "core/registry.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/stacks.h"

/* uthash allocates through these; keep them plain. */
#define uthash_fatal(msg) abort()
#include <uthash.h>

/* The public struct keeps uthash out of registry.h; the real entry appends
 * the hash handle. */
struct entry {
    struct lc_entry pub;
    UT_hash_handle hh;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t registry_cond = PTHREAD_COND_INITIALIZER;
static struct entry *table;
static struct lc_registry_counts counts;
static unsigned long owned_live; /* read by signal handlers without the lock */

/* getpid() is a system call, and the connect path would make several.
 * The cached value is refreshed in the fork child (registry_atfork_child).
 * A child made without fork()'s handlers (raw clone, _Fork) would stamp its
 * entries with the parent's pid: the drain claims by the real getpid(), so
 * such a child can miss its own connections but never touches the parent's. */
static pid_t cached_pid;

pid_t registry_self_pid(void)
{
    pid_t p = __atomic_load_n(&cached_pid, __ATOMIC_RELAXED);
    if (p == 0) {
        p = getpid();
        __atomic_store_n(&cached_pid, p, __ATOMIC_RELAXED);
    }
    return p;
}

static void count_live(const struct entry *e, int delta)
{
    if (e->pub.pid != registry_self_pid())
        return;
    counts.live[e->pub.kind] += (unsigned long)delta;
    __atomic_add_fetch(&owned_live, (unsigned long)delta, __ATOMIC_RELEASE);
}

/* Freed entries are kept for reuse: a connect/close cycle then costs no
 * malloc of ours (the benchmarks count instructions per cycle). */
#define FREELIST_MAX 256
static struct entry *freelist;
static int freelist_len;

static void entry_remove_locked(struct entry *e)
{
    HASH_DEL(table, e);
    count_live(e, -1);
    free(e->pub.stack);
    if (freelist_len < FREELIST_MAX) {
        e->hh.next = freelist;
        freelist = e;
        freelist_len++;
    } else {
        free(e);
    }
}

static struct entry *entry_alloc_locked(void)
{
    struct entry *e = freelist;
    if (e) {
        freelist = e->hh.next;
        freelist_len--;
        memset(e, 0, sizeof *e);
        return e;
    }
    return calloc(1, sizeof *e);
}

/* gettid() is a system call: once per thread is enough. */
static unsigned long current_tid(void)
{
    static __thread unsigned long tid;
    if (tid == 0)
        tid = (unsigned long)gettid();
    return tid;
}

struct lc_entry *registry_add(void *handle, int kind, int is_async, int failed, int fd,
                              const char *target, void *cancel, struct lc_stack *stack)
{
    if (handle == NULL || kind < 0 || kind >= LC_KIND_MAX) {
        free(stack);
        return NULL;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = lc_now_ms();
    unsigned long tid = current_tid();
    pid_t pid = registry_self_pid();

    pthread_mutex_lock(&registry_lock);
    struct entry *e = entry_alloc_locked();
    if (e == NULL) {
        pthread_mutex_unlock(&registry_lock);
        free(stack);
        return NULL;
    }
    e->pub.handle = handle;
    e->pub.kind = kind;
    e->pub.is_async = is_async;
    e->pub.failed = failed;
    e->pub.state = LC_ENTRY_OPEN;
    e->pub.pid = pid;
    e->pub.fd = fd;
    e->pub.cancel = cancel;
    e->pub.stack = stack;
    e->pub.thread = tid;
    e->pub.last_used_ms = now;
    e->pub.opened_at_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    if (target) {
        size_t len = strnlen(target, LC_TARGET_MAX - 1);
        memcpy(e->pub.target, target, len);
        e->pub.target[len] = '\0';
    }
    struct entry *old = NULL;
    HASH_FIND_PTR(table, &handle, old);
    if (old)
        entry_remove_locked(old); /* freed behind our back; the address came back */
    HASH_ADD_PTR(table, pub.handle, e);
    counts.opened[kind]++;
    if (failed)
        counts.failed[kind]++;
    count_live(e, +1);
    pthread_mutex_unlock(&registry_lock);
    return &e->pub;
}

void registry_update(void *handle, int failed, int fd, void *cancel, void **old_cancel)
{
    if (old_cancel)
        *old_cancel = NULL;
    pthread_mutex_lock(&registry_lock);
    struct entry *e = NULL;
    HASH_FIND_PTR(table, &handle, e);
    if (e && e->pub.state == LC_ENTRY_OPEN) {
        e->pub.failed = failed;
        e->pub.fd = fd;
        if (cancel) {
            if (old_cancel)
                *old_cancel = e->pub.cancel;
            e->pub.cancel = cancel;
        }
    } else if (old_cancel) {
        *old_cancel = cancel; /* not ours to keep: give it back */
    }
    pthread_mutex_unlock(&registry_lock);
}

int registry_set_connected(void *handle, int failed, int fd, const char *target, void *cancel)
{
    pthread_mutex_lock(&registry_lock);
    struct entry *e = NULL;
    HASH_FIND_PTR(table, &handle, e);
    int ok = e && e->pub.state == LC_ENTRY_OPEN;
    if (ok) {
        if (e->pub.failed && !failed)
            counts.failed[e->pub.kind]--;
        else if (!e->pub.failed && failed)
            counts.failed[e->pub.kind]++;
        e->pub.failed = failed;
        e->pub.fd = fd;
        e->pub.cancel = cancel;
        size_t len = strnlen(target, LC_TARGET_MAX - 1);
        memcpy(e->pub.target, target, len);
        e->pub.target[len] = '\0';
    }
    pthread_mutex_unlock(&registry_lock);
    return ok;
}

int registry_take(void *handle, int64_t wait_until_ms, struct lc_entry *info)
{
    pthread_mutex_lock(&registry_lock);
    struct entry *e = NULL;
    HASH_FIND_PTR(table, &handle, e);
    while (e && e->pub.state == LC_ENTRY_DRAINING) {
        int64_t left = wait_until_ms - lc_now_ms();
        if (left <= 0)
            break;
        struct timespec ts;
        lc_abstime_after_ms(left, &ts);
        pthread_cond_timedwait(&registry_cond, &registry_lock, &ts);
        e = NULL;
        HASH_FIND_PTR(table, &handle, e);
    }
    int r = e != NULL;
    if (e && e->pub.state == LC_ENTRY_DRAINING) {
        /* The drain still holds this entry (its pointer, the connection):
         * removing it would free memory the drain reads, and the caller's
         * real free would free the connection under it. Left as it is. */
        r = -1;
    } else if (e) {
        if (info) {
            *info = e->pub;
            info->stack = NULL;
        }
        counts.closed[e->pub.kind]++;
        entry_remove_locked(e);
    }
    pthread_mutex_unlock(&registry_lock);
    return r;
}

unsigned long registry_owned_live(void)
{
    return __atomic_load_n(&owned_live, __ATOMIC_ACQUIRE);
}

size_t registry_claim_for_drain(pid_t pid, struct lc_entry **out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&registry_lock);
    struct entry *e, *tmp;
    HASH_ITER(hh, table, e, tmp) {
        if (n >= max)
            break;
        if (e->pub.pid != pid || e->pub.state != LC_ENTRY_OPEN)
            continue;
        e->pub.state = LC_ENTRY_DRAINING;
        out[n++] = &e->pub;
    }
    pthread_mutex_unlock(&registry_lock);
    return n;
}

struct lc_entry *registry_claim_one(void *handle)
{
    pthread_mutex_lock(&registry_lock);
    struct entry *e = NULL;
    HASH_FIND_PTR(table, &handle, e);
    struct lc_entry *out = NULL;
    if (e && e->pub.pid == getpid() && e->pub.state == LC_ENTRY_OPEN) {
        e->pub.state = LC_ENTRY_DRAINING;
        out = &e->pub;
    }
    pthread_mutex_unlock(&registry_lock);
    return out;
}

void registry_release_drained(struct lc_entry **entries, size_t n)
{
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < n; i++) {
        if (entries[i]->state == LC_ENTRY_DRAINING) {
            entries[i]->state = LC_ENTRY_DRAINED;
            counts.drained++;
        }
    }
    pthread_cond_broadcast(&registry_cond);
    pthread_mutex_unlock(&registry_lock);
}

size_t registry_count_owned(pid_t pid)
{
    size_t n = 0;
    pthread_mutex_lock(&registry_lock);
    struct entry *e, *tmp;
    HASH_ITER(hh, table, e, tmp) {
        if (e->pub.pid == pid)
            n++;
    }
    pthread_mutex_unlock(&registry_lock);
    return n;
}

void registry_counts(struct lc_registry_counts *out)
{
    pthread_mutex_lock(&registry_lock);
    *out = counts;
    pthread_mutex_unlock(&registry_lock);
}

static struct lc_entry copy_entry(const struct lc_entry *src)
{
    struct lc_entry c = *src;
    c.stack = NULL;
    if (src->stack) {
        size_t bytes = sizeof *src->stack + (size_t)src->stack->depth * sizeof(void *);
        c.stack = malloc(bytes);
        if (c.stack)
            memcpy(c.stack, src->stack, bytes);
    }
    return c;
}

/* Copies of the entries PID owns that KEEP accepts (under the lock; KEEP may
 * also update the entry). */
static int (*transaction_probe)(struct lc_entry *e);

void registry_set_transaction_probe(int (*probe)(struct lc_entry *e))
{
    __atomic_store_n(&transaction_probe, probe, __ATOMIC_RELEASE);
}

static size_t collect(pid_t pid, int (*keep)(struct lc_entry *, const void *), const void *arg,
                      struct lc_entry **out)
{
    int (*probe)(struct lc_entry *) = __atomic_load_n(&transaction_probe, __ATOMIC_ACQUIRE);
    pthread_mutex_lock(&registry_lock);
    size_t n = 0, cap = HASH_COUNT(table);
    struct lc_entry *copies = calloc(cap ? cap : 1, sizeof *copies);
    struct entry *e, *tmp;
    HASH_ITER(hh, table, e, tmp) {
        if (copies == NULL || n >= cap)
            break;
        if (e->pub.pid == pid && keep(&e->pub, arg)) {
            copies[n] = copy_entry(&e->pub);
            copies[n].in_transaction = probe && !e->pub.failed && probe(&e->pub);
            n++;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    *out = copies;
    return copies ? n : 0;
}

static int keep_kind(struct lc_entry *e, const void *arg)
{
    int kind = *(const int *)arg;
    return kind < 0 || e->kind == kind;
}

size_t registry_snapshot(pid_t pid, int kind, struct lc_entry **out)
{
    return collect(pid, keep_kind, &kind, out);
}

void registry_free_snapshot(struct lc_entry *copies, size_t n)
{
    for (size_t i = 0; copies && i < n; i++)
        free(copies[i].stack);
    free(copies);
}

int registry_touch(void *handle, struct lc_entry *copy)
{
    int cleared = 0;
    pthread_mutex_lock(&registry_lock);
    struct entry *e = NULL;
    HASH_FIND_PTR(table, &handle, e);
    if (e) {
        e->pub.last_used_ms = lc_now_ms();
        if (e->pub.suspect) {
            e->pub.suspect = 0;
            cleared = 1;
            *copy = copy_entry(&e->pub);
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return cleared;
}

struct idle_query {
    int64_t now_ms, age_ms;
};

static int keep_newly_idle(struct lc_entry *e, const void *arg)
{
    const struct idle_query *q = arg;
    if (e->suspect || e->state != LC_ENTRY_OPEN || q->now_ms - e->last_used_ms < q->age_ms)
        return 0;
    e->suspect = 1;
    return 1;
}

size_t registry_find_idle(pid_t pid, int64_t now_ms, int64_t age_ms, struct lc_entry **out)
{
    struct idle_query q = {now_ms, age_ms};
    return collect(pid, keep_newly_idle, &q, out);
}

void registry_atfork_prepare(void)
{
    pthread_mutex_lock(&registry_lock);
}

void registry_atfork_parent(void)
{
    pthread_mutex_unlock(&registry_lock);
}

void registry_atfork_child(void)
{
    __atomic_store_n(&cached_pid, getpid(), __ATOMIC_RELAXED);
    /* Every entry is the parent's: the child counts from zero. */
    memset(&counts, 0, sizeof counts);
    __atomic_store_n(&owned_live, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&registry_lock);
}

void registry_reset_for_tests(void)
{
    pthread_mutex_lock(&registry_lock);
    struct entry *e, *tmp;
    HASH_ITER(hh, table, e, tmp) {
        HASH_DEL(table, e);
        free(e->pub.stack);
        free(e);
    }
    while (freelist) {
        e = freelist;
        freelist = e->hh.next;
        free(e);
    }
    freelist_len = 0;
    memset(&counts, 0, sizeof counts);
    __atomic_store_n(&owned_live, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&registry_lock);
}
