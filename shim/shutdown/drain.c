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

enum step {
    STEP_WAITING,        /* not closing yet: the grace is running */
    STEP_CUT,
    STEP_CLOSING,
    STEP_FLUSH,          /* our output waits for the socket */
    STEP_SETTLE,         /* waits for the server to be idle (PostgreSQL) */
    STEP_AWAIT_EOF,
    STEP_AWAIT_CONSUMED,
    STEP_DONE
};

struct work {
    struct lc_entry *e;
    const struct lc_kind *ops;
    int fd;
    int step;
    int cancelled;   /* a cancel request was sent for it */
    int abandoned;   /* the exiting thread was inside it: no thread will come back */
    int scratch;     /* the settle operation's own state */
};

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

static const struct lc_kind *ops_for(const struct lc_entry *e)
{
    return lc_kind_of(e->kind);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* The handles threads are inside (every frame of every thread's stack),
 * refreshed once per round. The array grows to what the snapshot reports,
 * outside its lock; a round whose allocation fails keeps the last complete
 * snapshot rather than a truncated one, which would make busy connections
 * look idle. */
static void **inside;
static size_t n_inside, inside_cap;

static void refresh_inside(void)
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
static int thread_inside(const struct work *w)
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
static int is_busy(struct work *w)
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

/* ---- cancel helpers: PQcancel blocks (connect, send, recv), so it runs on
 * helper threads. A started cancel is waited for until the deadline: cut
 * mid-flight, its half-open connection crashes PgBouncer 1.18. ---- */

struct cancel_job {
    struct lc_entry **entries;
    size_t count;
    size_t next;       /* atomic */
    size_t finished;   /* atomic */
    int refs;          /* atomic: workers + the owner; the last one frees */
    struct lc_entry *owned; /* a copy the job frees (drain_close_by_program) */
};

static void job_release(struct cancel_job *job)
{
    if (__atomic_sub_fetch(&job->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    free(job->entries);
    free(job->owned);
    free(job);
}

static void *cancel_worker(void *arg)
{
    struct cancel_job *job = arg;
    for (;;) {
        size_t i = __atomic_fetch_add(&job->next, 1, __ATOMIC_ACQ_REL);
        if (i >= job->count)
            break;
        const struct lc_kind *k = ops_for(job->entries[i]);
        if (k->cancel)
            k->cancel(job->entries[i]);
        __atomic_add_fetch(&job->finished, 1, __ATOMIC_ACQ_REL);
    }
    job_release(job);
    return NULL;
}

/* Returns the job (release it with job_release), or NULL when nothing runs. */
static struct cancel_job *start_cancels(struct lc_entry **entries, size_t count,
                                        struct lc_entry *owned)
{
    if (count == 0)
        return NULL;
    struct cancel_job *job = calloc(1, sizeof *job);
    struct lc_entry **copy = calloc(count, sizeof *copy);
    if (job == NULL || copy == NULL) {
        free(job);
        free(copy);
        return NULL;
    }
    memcpy(copy, entries, count * sizeof *copy);
    job->entries = copy;
    job->count = count;
    job->owned = owned;
    size_t threads = count < 16 ? count : 16;
    job->refs = (int)threads + 1;
    size_t started = 0;
    for (size_t t = 0; t < threads; t++)
        if (lc_helper_thread(cancel_worker, job, 128 * 1024) == 0)
            started++;
    __atomic_sub_fetch(&job->refs, (int)(threads - started), __ATOMIC_ACQ_REL);
    if (started == 0) {
        __atomic_add_fetch(&job->refs, 1, __ATOMIC_ACQ_REL);
        cancel_worker(job); /* no thread to be had: cancel inline */
    }
    return job;
}

/* Waits until every cancel of JOB completed, or UNTIL_MS. Returns 1 if all did. */
static int cancels_wait(struct cancel_job *job, int64_t until_ms)
{
    if (job == NULL)
        return 1;
    while (__atomic_load_n(&job->finished, __ATOMIC_ACQUIRE) < job->count) {
        if (lc_now_ms() >= until_ms)
            return 0;
        sleep_ms(1);
    }
    return 1;
}

/* Reads and drops whatever the server sent; returns 1 at EOF or error. */
static int discard_input(int fd)
{
    char buf[4096];
    ssize_t got;
    do
        got = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    while (got > 0);
    return got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* Bytes we sent that the peer has not consumed (unix) or acknowledged (TCP). */
static int unsent_bytes(int fd)
{
    int n = 0;
    return ioctl(fd, SIOCOUTQ, &n) == 0 ? n : 0;
}

static int is_unix_socket(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    return getsockname(fd, (struct sockaddr *)&ss, &len) == 0 && ss.ss_family == AF_UNIX;
}

/* Everything is flushed: say goodbye and decide whether to wait.
 *
 * Closing a socket with unread input makes the kernel reset it, and a reset
 * makes Redis drop what it has not read yet, mid-pipeline. What we flushed
 * is not all: the program's own earlier writes (appended, flushed, replies
 * never read) may still sit unread in the server's receive queue. So a Redis
 * connection waits until the server has taken everything: on a unix socket
 * until nothing of ours is left unread (SIOCOUTQ counts unread bytes there),
 * over TCP until the server's EOF, whatever we wrote ourselves: SIOCOUTQ
 * counts only unacknowledged bytes there, and acknowledged is not read.
 * Knowing that nothing was written since the last reply would need per-call
 * bookkeeping on the command path; the EOF costs one round trip, overlapped
 * across all connections by one poll. PostgreSQL gets its 5-byte Terminate
 * and needs no wait (the backend reads it after our FIN as well as before),
 * unless the server may still be sending (a cancelled query's error and
 * ReadyForQuery, a COPY OUT's rest, pipeline results): then we wait for its
 * EOF, or it logs a broken pipe (seen once in the pgbench test). */
static void goodbye(struct work *w)
{
    int server_sending = w->ops->server_may_send && w->ops->server_may_send(w->e);
    if (w->ops->terminate)
        w->ops->terminate(w->e, w->fd);
    shutdown(w->fd, SHUT_WR);
    if (server_sending || w->ops->goodbye_wait == LC_GOODBYE_EOF)
        w->step = STEP_AWAIT_EOF;
    else if (w->ops->goodbye_wait == LC_GOODBYE_DONE)
        w->step = STEP_DONE;
    else if (is_unix_socket(w->fd))
        w->step = unsent_bytes(w->fd) > 0 ? STEP_AWAIT_CONSUMED : STEP_DONE;
    else
        w->step = STEP_AWAIT_EOF;
}

static void after_settle(struct work *w, int r)
{
    if (r == LC_SETTLE_WAIT) {
        w->step = STEP_SETTLE;
        return;
    }
    if (r == LC_SETTLE_GIVE_UP)
        LC_DEBUG("%s %p could not be brought back to idle: plain goodbye", w->ops->name,
                 w->e->handle);
    goodbye(w); /* idle now; or settling failed: the plain goodbye */
}

static void after_flush(struct work *w, int f)
{
    if (f == LC_FLUSH_GIVE_UP)
        w->step = STEP_CUT;
    else if (f == LC_FLUSH_MORE)
        w->step = STEP_FLUSH;
    else if (w->ops->settle)
        after_settle(w, w->ops->settle(w->e, w->fd, &w->scratch, lc_now_ms() + 100));
    else
        goodbye(w);
}

static void discard_pending_input(struct work *works, size_t n)
{
    struct pollfd *fds = calloc(n ? n : 1, sizeof *fds);
    if (fds == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        fds[i].fd = works[i].fd; /* negative fds are ignored by poll */
        fds[i].events = POLLIN;
    }
    if (poll(fds, n, 0) > 0)
        for (size_t i = 0; i < n; i++)
            /* POLLHUP: both ends are shut, the server has closed its
             * socket: unread input there can no longer reset anything. */
            if ((fds[i].revents & (POLLIN | POLLHUP)) == POLLIN)
                discard_input(works[i].fd);
    free(fds);
}

/* One round of the close: every work item in a closing step advances, after
 * a poll of at most MAX_WAIT_MS. Flushing ends at FLUSH_UNTIL (then cut),
 * settling at SETTLE_UNTIL (then the plain goodbye). FDS and IDX hold N
 * entries. Returns 0 when nothing is left to wait for, or UNTIL_MS passed. */
static int close_round(struct work *works, size_t n, struct pollfd *fds, size_t *idx,
                       int64_t flush_until, int64_t settle_until, int64_t until_ms,
                       int max_wait_ms)
{
    size_t m = 0;
    int consumed_pending = 0, settle_pending = 0;
    int64_t now = lc_now_ms();
    for (size_t i = 0; i < n; i++) {
        struct work *w = &works[i];
        if (w->step == STEP_FLUSH && now >= flush_until)
            w->step = STEP_CUT;
        if (w->step == STEP_SETTLE && now >= settle_until)
            goodbye(w);
        int s = w->step;
        if (s != STEP_FLUSH && s != STEP_SETTLE && s != STEP_AWAIT_EOF &&
            s != STEP_AWAIT_CONSUMED)
            continue;
        if (s == STEP_AWAIT_CONSUMED) {
            if (discard_input(w->fd) || unsent_bytes(w->fd) == 0) {
                w->step = STEP_DONE;
                continue;
            }
            consumed_pending = 1;
        }
        if (s == STEP_SETTLE)
            settle_pending = 1;
        fds[m].fd = w->fd;
        fds[m].events = s == STEP_FLUSH ? POLLOUT : POLLIN;
        fds[m].revents = 0;
        idx[m++] = i;
    }
    int64_t left = until_ms - now;
    if (m == 0 || left <= 0)
        return 0;
    /* SIOCOUTQ draining raises no event: look again every millisecond.
     * Settling may also wait on our own output (a ROLLBACK on a
     * non-blocking connection): a short period covers it. */
    int wait = consumed_pending ? 1 : settle_pending ? 5 : (left > 50 ? 50 : (int)left);
    if (wait > max_wait_ms)
        wait = max_wait_ms;
    int r = poll(fds, m, wait);
    if (r < 0 && errno != EINTR)
        return 0;
    for (size_t k = 0; k < m; k++) {
        struct work *w = &works[idx[k]];
        if (w->step == STEP_SETTLE) {
            after_settle(w, w->ops->settle(w->e, w->fd, &w->scratch, settle_until));
            continue;
        }
        if (fds[k].revents == 0)
            continue;
        if (w->step == STEP_FLUSH)
            after_flush(w, w->ops->flush(w->e, w->fd, flush_until));
        else if (discard_input(w->fd))
            w->step = STEP_DONE;
    }
    return 1;
}

/* Runs the close until every work item is done or UNTIL_MS. */
static void close_loop(struct work *works, size_t n, int64_t flush_until, int64_t settle_until,
                       int64_t until_ms)
{
    struct pollfd *fds = calloc(n ? n : 1, sizeof *fds);
    size_t *idx = calloc(n ? n : 1, sizeof *idx);
    if (fds != NULL && idx != NULL)
        while (close_round(works, n, fds, idx, flush_until, settle_until, until_ms, 50))
            ;
    free(fds);
    free(idx);
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

void drain_close_late(void *handle)
{
    struct lc_entry *e = registry_claim_one(handle);
    if (e == NULL)
        return;
    struct work w = {.e = e, .ops = ops_for(e), .step = STEP_CLOSING};
    w.fd = w.ops->socket_fd(e);
    if (w.fd >= 0) {
        after_flush(&w, w.ops->flush(e, w.fd, lc_now_ms() + 100));
        /* A fresh connection has nothing buffered; whatever is not done at
         * once is cut rather than waited for. */
        discard_input(w.fd);
        if (w.step != STEP_DONE)
            shutdown(w.fd, SHUT_RDWR);
    }
    registry_release_drained(&e, 1);
}

/* The close reserve: a fifth of the deadline, at most 1 s. */
static int64_t close_reserve(void)
{
    int64_t reserve = lc_cfg.deadline_ms / 5;
    return reserve > 1000 ? 1000 : reserve;
}

int drain_close_by_program(struct lc_entry *info, int keep_fd, int64_t until_ms)
{
    const struct lc_kind *ops = ops_for(info);
    int fd = info->failed ? -1 : ops->socket_fd(info);
    if (fd < 0)
        return 0;
    const int64_t reserve = close_reserve();
    const int64_t close_start = until_ms - reserve;
    struct work w = {.e = info, .ops = ops, .fd = fd, .step = STEP_CLOSING};
    int abandoned = 0;
    /* A query still running would go on in its backend after the close:
     * cancel it first, and let its error arrive. */
    if (!keep_fd && ops->cancel && ops->server_busy && ops->server_busy(info, fd, 0)) {
        struct lc_entry *copy = malloc(sizeof *copy);
        if (copy) {
            *copy = *info;
            struct lc_entry *one[1] = {copy};
            struct cancel_job *job = start_cancels(one, 1, copy);
            w.cancelled = 1;
            if (job) {
                abandoned = !cancels_wait(job, close_start);
                job_release(job);
            } else {
                free(copy);
            }
        }
        while (!abandoned && ops->server_busy(info, fd, 1) && lc_now_ms() < close_start)
            sleep_ms(1);
    }
    int f = ops->flush(info, fd, until_ms - reserve / 2);
    if (keep_fd) {
        /* The program keeps the socket: write what it buffered, no more. */
        while (f == LC_FLUSH_MORE && lc_now_ms() < until_ms) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            poll(&p, 1, 10);
            f = ops->flush(info, fd, until_ms);
        }
        return abandoned;
    }
    after_flush(&w, f);
    close_loop(&w, 1, until_ms - reserve / 2, until_ms - reserve / 2, until_ms);
    discard_pending_input(&w, 1);
    if (w.step != STEP_DONE)
        shutdown(fd, SHUT_RDWR);
    return abandoned;
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
