#define _GNU_SOURCE
#include "shutdown/drain.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "track/threads.h"
#include "track/inflight.h"
#include "core/log.h"
#include "core/process.h"
#include "shutdown/internal.h"

/* Calls the exiting thread was inside (drain_abandon). */
#define ABANDONED_MAX 8
static void *abandoned[ABANDONED_MAX];
static pid_t abandoned_pid;

void drain_abandon(void *handle)
{
    if (handle == NULL || handle == LC_CONNECTING || handle == LC_OWN_CALL)
        return;
    pid_t self = getpid();
    if (__atomic_load_n(&abandoned_pid, __ATOMIC_ACQUIRE) != self) {
        for (int i = 0; i < ABANDONED_MAX; i++)
            __atomic_store_n(&abandoned[i], NULL, __ATOMIC_RELAXED);
        __atomic_store_n(&abandoned_pid, self, __ATOMIC_RELEASE);
    }
    for (int i = 0; i < ABANDONED_MAX; i++) {
        void *none = NULL;
        if (__atomic_compare_exchange_n(&abandoned[i], &none, handle, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return;
    }
}

static int is_abandoned(const void *handle)
{
    if (__atomic_load_n(&abandoned_pid, __ATOMIC_ACQUIRE) != getpid())
        return 0;
    for (int i = 0; i < ABANDONED_MAX; i++)
        if (__atomic_load_n(&abandoned[i], __ATOMIC_ACQUIRE) == handle)
            return 1;
    return 0;
}

/* The handles threads are inside (every frame of every thread's stack),
 * refreshed once per round. The array grows to what the snapshot reports,
 * outside its lock; a round whose allocation fails keeps the last complete
 * snapshot rather than a truncated one, which would make busy connections
 * look idle. */
static void **inside;
static size_t n_inside, inside_cap;

void refresh_inside(void)
{
    for (int tries = 0; tries < 4; tries++) {
        size_t n = inflight_snapshot_all(inside, inside_cap);
        if (n <= inside_cap) {
            n_inside = n;
            return;
        }
        size_t cap = n + n / 2 + 64;
        void **bigger = realloc(inside, cap * sizeof *bigger);
        if (bigger == NULL)
            return;
        inside = bigger;
        inside_cap = cap;
    }
}

/* The exiting thread, frozen in exit(), is in an abandoned call: its slot
 * says "inside" but nothing will ever happen there again, so the connection
 * is treated as the async API's (the server's state alone decides). */
int thread_inside(const struct work *w)
{
    return !w->abandoned && inflight_contains(inside, n_inside, w->e->handle);
}

/* Threads inside a connect call: their connection is not ours yet. */
static size_t connecting(void)
{
    size_t c = 0;
    for (size_t i = 0; i < n_inside; i++)
        if (inside[i] == LC_CONNECTING)
            c++;
    return c;
}

/* Busy: a thread is inside the library with it, or (async API) the server is
 * still working on a query nobody waits for. */
int is_busy(struct work *w)
{
    if (thread_inside(w))
        return 1;
    if (w->ops->server_busy && w->fd >= 0)
        return w->ops->server_busy(w->e, w->fd, w->cancelled);
    return 0;
}

/* One "drain_phase" event per phase, with its count and the milliseconds
 * since the drain began. */
__attribute__((format(printf, 4, 5))) static void phase_event(const char *phase, int64_t start_ms,
                                                               size_t count, const char *fmt, ...)
{
    if (lc_log_level < LC_LOG_INFO)
        return;
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char fields[160];
    snprintf(fields, sizeof fields, "\"phase\":\"%s\",\"count\":%zu,\"ms\":%lld", phase, count,
             (long long)(lc_now_ms() - start_ms));
    lc_event(LC_LOG_INFO, "drain_phase", fields, "%s (%lld ms)", msg,
             (long long)(lc_now_ms() - start_ms));
}

static size_t count_busy(struct work *works, size_t n)
{
    refresh_inside();
    size_t busy = connecting();
    for (size_t i = 0; i < n; i++)
        if (works[i].step != STEP_DONE && is_busy(&works[i]))
            busy++;
    return busy;
}

/* Has this process a child still alive (any thread's)? Such a child may hold
 * a copy of a socket that is not close-on-exec (posix_spawn, system and popen
 * run no fork handler, so process_has_forked cannot know of it). */
static int has_live_child(void)
{
    DIR *tasks = opendir("/proc/self/task");
    if (tasks == NULL)
        return 1;
    int found = 0;
    struct dirent *d;
    while (!found && (d = readdir(tasks)) != NULL) {
        if (d->d_name[0] == '.')
            continue;
        char path[64], buf[16];
        snprintf(path, sizeof path, "/proc/self/task/%.20s/children", d->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t got = fd >= 0 ? read(fd, buf, sizeof buf) : -1;
        if (fd >= 0)
            close(fd);
        /* No such file (a kernel without CONFIG_PROC_CHILDREN): assume one. */
        found = got != 0;
    }
    closedir(tasks);
    return found;
}

/* In a signal drain the process dies right after: a connection with nothing
 * to say is left to the kernel's close then, which ends it as our goodbye
 * would, without waking its server process now (each Terminate starts a
 * backend's exit, and 200 of them competed with ours for the CPU). Only where
 * that close ends the connection: the caller checked that nothing forked
 * since load (the child holds a copy of every socket); while a child lives
 * (LIVE_CHILD), a socket that is not close-on-exec may be in it too
 * (posix_spawn, system and popen run no fork handler). The kind decides the
 * rest. What is unread when the drain ends is read and dropped by its last
 * poll (discard_pending_input), as after a goodbye: no close is a reset. */
static int left_to_kernel(const struct work *w, int live_child)
{
    if (w->ops->nothing_to_say == NULL)
        return 0;
    /* With no child alive, not even hiredis's sockets (not close-on-exec)
     * are in another process: a grandchild whose parent exited is not seen. */
    if (live_child) {
        int fdflags = fcntl(w->fd, F_GETFD);
        if (fdflags < 0 || !(fdflags & FD_CLOEXEC))
            return 0;
    }
    return w->ops->nothing_to_say(w->e, w->fd);
}

static int close_first_first(const void *a, const void *b)
{
    const struct work *x = a, *y = b;
    return !x->ops->close_first - !y->ops->close_first;
}

/* Idle in a transaction, and nobody can end it: from the start of a drain
 * the gate stops every thread before its next call on the connection, so the
 * transaction can never commit. Rolled back now, not after the grace: other
 * threads' statements may be waiting for its row locks, and would otherwise
 * spend the whole grace waiting (issue 19, case 8). */
static void close_frozen_transactions(struct work *works, size_t n, int64_t flush_until)
{
    for (size_t i = 0; i < n; i++) {
        struct work *w = &works[i];
        if (w->step != STEP_WAITING || w->ops->in_transaction == NULL || is_busy(w) ||
            !w->ops->in_transaction(w->e))
            continue;
        w->step = STEP_CLOSING;
        after_flush(w, w->ops->flush(w->e, w->fd, flush_until));
    }
}

/* Cancel requests for the busy connections among WORKS that PICK selects;
 * the rest of those busy ones are cut. Returns the job (or NULL). */
static struct cancel_job *cancel_busy(struct work *works, size_t n, int (*pick)(const struct work *),
                                      struct lc_drain_result *result, size_t *n_cancel)
{
    struct lc_entry **to_cancel = calloc(n ? n : 1, sizeof *to_cancel);
    size_t nc = 0;
    for (size_t i = 0; i < n; i++) {
        struct work *w = &works[i];
        if (w->step != STEP_WAITING || w->cancelled || !pick(w) || !is_busy(w))
            continue;
        if (w->ops->cancel && to_cancel) {
            to_cancel[nc++] = w->e;
            w->cancelled = 1;
        } else {
            shutdown(w->fd, SHUT_RDWR);
            w->step = STEP_DONE;
            result->cut++;
        }
    }
    struct cancel_job *job = start_cancels(to_cancel, nc, NULL);
    free(to_cancel);
    result->cancelled += nc;
    *n_cancel = nc;
    return job;
}

static int pick_abandoned(const struct work *w)
{
    return w->abandoned;
}

static int pick_any(const struct work *w)
{
    (void)w;
    return 1;
}

/* Waits until nothing is busy or UNTIL_MS, closing frozen transactions and
 * advancing their closes meanwhile. Returns how many are still busy. */
static size_t wait_busy(struct work *works, size_t n, struct pollfd *fds, size_t *idx,
                        int64_t until_ms, int64_t close_until)
{
    size_t busy;
    while ((busy = count_busy(works, n)) > 0 && lc_now_ms() < until_ms) {
        close_frozen_transactions(works, n, close_until);
        if (!close_round(works, n, fds, idx, close_until, close_until, close_until, 1))
            sleep_ms(1);
    }
    return busy;
}

void drain_run(int mode, int64_t start_ms, struct lc_drain_result *result)
{
    memset(result, 0, sizeof *result);
    const int64_t deadline = start_ms + lc_cfg.deadline_ms;
    int64_t grace_end = start_ms + lc_cfg.grace_ms;
    if (grace_end > deadline)
        grace_end = deadline;
    /* The close phase needs a little time of its own (write, FIN, EOF). */
    const int64_t reserve = close_reserve();
    const int64_t close_start = deadline - reserve;
    if (grace_end > close_start)
        grace_end = close_start;

    /* Phase gate: no new query, command or connection from here on. */
    gate_close(mode, deadline + 100);

    pid_t self = getpid();
    size_t cap = registry_count_owned(self) + 16;
    struct lc_entry **entries = calloc(cap, sizeof *entries);
    struct work *works = calloc(cap, sizeof *works);
    struct pollfd *fds = calloc(cap, sizeof *fds);
    size_t *idx = calloc(cap, sizeof *idx);
    if (entries == NULL || works == NULL || fds == NULL || idx == NULL) {
        free(entries);
        free(works);
        free(fds);
        free(idx);
        return;
    }
    size_t n = registry_claim_for_drain(self, entries, cap);
    for (size_t i = 0; i < n; i++) {
        works[i].e = entries[i];
        works[i].ops = ops_for(entries[i]);
        works[i].fd = works[i].ops->socket_fd(entries[i]);
        works[i].step = works[i].fd >= 0 ? STEP_WAITING : STEP_DONE;
        works[i].abandoned = mode == LC_GATE_EXIT && is_abandoned(entries[i]->handle);
    }
    /* close_first kinds (PostgreSQL) first: each goodbye wakes a backend that then spends a
     * millisecond or so exiting; started early, those exits overlap our work
     * on the Redis connections instead of preempting it. */
    qsort(works, n, sizeof *works, close_first_first);
    phase_event("start", start_ms, n, "drain: %zu connection%s, deadline %lld ms, grace %lld ms",
                n, n == 1 ? "" : "s", (long long)lc_cfg.deadline_ms, (long long)lc_cfg.grace_ms);

    /* A call the exiting thread abandoned gets no grace: nobody waits for its
     * answer, so a running query is cancelled at once. */
    size_t n_early;
    refresh_inside();
    struct cancel_job *early = cancel_busy(works, n, pick_abandoned, result, &n_early);
    const int64_t close_until = deadline - reserve / 2;

    /* Phase grace: in-flight queries and commands may finish; transactions
     * nobody can end any more are rolled back meanwhile. */
    size_t busy = wait_busy(works, n, fds, idx, grace_end, close_until);
    phase_event("grace", start_ms, busy, "drain: grace over, %zu still busy", busy);

    /* Phase cancel: a kind with a cancel (PostgreSQL, MySQL) gets a cancel
     * request; the others (Redis) are cut. */
    struct cancel_job *job = NULL;
    if (busy > 0) {
        size_t nc;
        job = cancel_busy(works, n, pick_any, result, &nc);
        phase_event("cancel", start_ms, nc, "drain: %zu cancel request%s, %lu cut", nc,
                    nc == 1 ? "" : "s", result->cut);
        wait_busy(works, n, fds, idx, close_start, close_until);
    }

    refresh_inside();
    /* Phase close: whatever is still in use is cut; the rest gets its
     * buffered output, the protocol's goodbye and a FIN (goodbye() says when
     * we must then wait for the server to take what we sent), or, in a
     * signal drain, is left to the kernel's close if it has nothing to say. */
    size_t to_kernel = 0;
    const int kernel_may_close = mode == LC_GATE_SIGNAL && !process_has_forked();
    const int live_child = kernel_may_close && has_live_child();
    for (size_t i = 0; i < n; i++) {
        struct work *w = &works[i];
        if (w->step != STEP_WAITING)
            continue; /* done, or closing since the grace */
        if (thread_inside(w)) {
            shutdown(w->fd, SHUT_RDWR);
            w->step = STEP_DONE;
            result->cut++;
            continue;
        }
        if (kernel_may_close && left_to_kernel(w, live_child)) {
            w->step = STEP_DONE;
            to_kernel++;
            continue;
        }
        w->step = STEP_CLOSING;
        after_flush(w, w->ops->flush(w->e, w->fd, deadline - reserve / 2));
    }
    while (close_round(works, n, fds, idx, close_until, close_until, deadline, 50))
        ;

    if (to_kernel > 0)
        LC_DEBUG("drain: %zu idle connection%s left to the kernel's close at exit", to_kernel,
                 to_kernel == 1 ? "" : "s");
    /* Unread input at close time would turn the close into a reset: one poll
     * finds the sockets holding some (those left to the kernel too: a
     * notification may have come since). What did not finish is shut down, and
     * counted as cut: the server sees an abrupt end. */
    discard_pending_input(works, n);
    for (size_t i = 0; i < n; i++) {
        struct work *w = &works[i];
        if (w->fd >= 0 && w->step != STEP_DONE) {
            static const char *const step_names[] = {"waiting", "broken", "closing", "flushing",
                                                     "settling", "awaiting EOF",
                                                     "awaiting the server's read", "done"};
            LC_DEBUG("cut %s %p at the deadline (%s)", w->ops->name, w->e->handle,
                     step_names[w->step]);
            shutdown(w->fd, SHUT_RDWR);
            result->cut++;
        }
        result->closed[w->e->kind]++;
    }
    /* A cancel request still on its way completes (or the deadline passes)
     * before the process may die. */
    cancels_wait(early, deadline);
    cancels_wait(job, deadline);
    if (early)
        job_release(early);
    if (job)
        job_release(job);
    registry_release_drained(entries, n);
    result->elapsed_ms = lc_now_ms() - start_ms;
    phase_event("close", start_ms, n, "drain: closed %zu, %lu cut", n, result->cut);
    free(entries);
    free(works);
    free(fds);
    free(idx);
}

