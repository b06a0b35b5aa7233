#define _GNU_SOURCE
#include "drain.h"

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

#include "inflight.h"
#include "log.h"
#include "runtime.h"

enum step { STEP_CUT, STEP_CLOSING, STEP_FLUSH, STEP_AWAIT_EOF, STEP_AWAIT_CONSUMED, STEP_DONE };

struct work {
    struct lc_entry *e;
    const struct lc_kind_ops *ops;
    int fd;
    int step;
};

static const struct lc_kind_ops *ops_for(const struct lc_entry *e)
{
    return e->kind == LC_KIND_PQ ? &lc_pq_ops : &lc_redis_ops;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* The handles threads are inside, refreshed once per round. */
static void *inside[1024];
static size_t n_inside;

static void refresh_inside(void)
{
    n_inside = inflight_snapshot(inside, sizeof inside / sizeof inside[0]);
}

static int thread_inside(const struct work *w)
{
    return inflight_contains(inside, n_inside, w->e->handle);
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
        return w->ops->server_busy(w->e, w->fd);
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

/* ---- cancel helpers: PQcancel blocks, so it runs on detached threads that
 * the drain never waits for past the deadline. ---- */

struct cancel_job {
    struct lc_entry **entries;
    size_t count;
    size_t next;   /* atomic */
};

static void *cancel_worker(void *arg)
{
    struct cancel_job *job = arg;
    for (;;) {
        size_t i = __atomic_fetch_add(&job->next, 1, __ATOMIC_ACQ_REL);
        if (i >= job->count)
            break;
        lc_pq_ops.cancel(job->entries[i]);
    }
    /* The job is leaked on purpose: a worker stuck on a stalled server may
     * still hold it when the process ends. */
    return NULL;
}

static void start_cancels(struct lc_entry **entries, size_t count)
{
    if (count == 0)
        return;
    struct cancel_job *job = calloc(1, sizeof *job);
    struct lc_entry **copy = calloc(count, sizeof *copy);
    if (job == NULL || copy == NULL) {
        free(job);
        free(copy);
        return;
    }
    memcpy(copy, entries, count * sizeof *copy);
    job->entries = copy;
    job->count = count;
    size_t threads = count < 16 ? count : 16;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 128 * 1024);
    size_t started = 0;
    for (size_t t = 0; t < threads; t++) {
        pthread_t tid;
        if (pthread_create(&tid, &attr, cancel_worker, job) == 0)
            started++;
    }
    pthread_attr_destroy(&attr);
    if (started == 0)
        cancel_worker(job); /* no thread to be had: cancel inline */
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
 * makes Redis drop a client mid-pipeline, so Redis connections we just wrote
 * to wait until the server has taken what we sent: on a unix socket until
 * nothing of ours is left unread (SIOCOUTQ), over TCP until the server's EOF
 * (acknowledged is not yet read). PostgreSQL gets its 5-byte Terminate and
 * needs no wait (the backend reads it after our FIN as well as before),
 * unless the server may still be sending (a cancelled query's error and
 * ReadyForQuery): then we wait for its EOF, or it logs a broken pipe (seen
 * once in the pgbench test). */
static void goodbye(struct work *w, int wrote)
{
    int server_sending = w->ops->server_may_send && w->ops->server_may_send(w->e);
    if (w->ops->terminate)
        w->ops->terminate(w->e, w->fd);
    shutdown(w->fd, SHUT_WR);
    if (server_sending)
        w->step = STEP_AWAIT_EOF;
    else if (w->e->kind == LC_KIND_PQ || !wrote)
        w->step = STEP_DONE;
    else if (is_unix_socket(w->fd))
        w->step = unsent_bytes(w->fd) > 0 ? STEP_AWAIT_CONSUMED : STEP_DONE;
    else
        w->step = STEP_AWAIT_EOF;
}

/* Applies a flush result; WROTE_BEFORE says an earlier round wrote. */
static void after_flush(struct work *w, int f)
{
    if (f == LC_FLUSH_GIVE_UP)
        w->step = STEP_CUT;
    else if (f == LC_FLUSH_MORE)
        w->step = STEP_FLUSH;
    else
        goodbye(w, f == LC_FLUSH_WROTE || w->step == STEP_FLUSH);
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
            if (fds[i].revents & POLLIN)
                discard_input(works[i].fd);
    free(fds);
}

/* Waits until every work item in a waiting step has moved on, or until_ms. */
static void run_step(struct work *works, size_t n, int step, int64_t until_ms)
{
    struct pollfd *fds = calloc(n ? n : 1, sizeof *fds);
    size_t *idx = calloc(n ? n : 1, sizeof *idx);
    if (fds == NULL || idx == NULL) {
        free(fds);
        free(idx);
        return;
    }
    for (;;) {
        size_t m = 0;
        int consumed_pending = 0;
        for (size_t i = 0; i < n; i++) {
            int s = works[i].step;
            if (step == STEP_FLUSH ? s != STEP_FLUSH : (s != STEP_AWAIT_EOF && s != STEP_AWAIT_CONSUMED))
                continue;
            if (s == STEP_AWAIT_CONSUMED) {
                if (discard_input(works[i].fd) || unsent_bytes(works[i].fd) == 0) {
                    works[i].step = STEP_DONE;
                    continue;
                }
                consumed_pending = 1;
            }
            fds[m].fd = works[i].fd;
            fds[m].events = step == STEP_FLUSH ? POLLOUT : POLLIN;
            fds[m].revents = 0;
            idx[m++] = i;
        }
        int64_t left = until_ms - lc_now_ms();
        if (m == 0 || left <= 0)
            break;
        /* SIOCOUTQ draining raises no event: look again every millisecond. */
        int wait = consumed_pending ? 1 : (left > 50 ? 50 : (int)left);
        int r = poll(fds, m, wait);
        if (r < 0 && errno != EINTR)
            break;
        for (size_t k = 0; k < m; k++) {
            if (fds[k].revents == 0)
                continue;
            struct work *w = &works[idx[k]];
            if (step == STEP_FLUSH) {
                after_flush(w, w->ops->flush(w->e, w->fd));
            } else if (discard_input(w->fd)) {
                w->step = STEP_DONE;
            }
        }
    }
    free(fds);
    free(idx);
}

static int postgresql_first(const void *a, const void *b)
{
    const struct work *x = a, *y = b;
    return (x->e->kind != LC_KIND_PQ) - (y->e->kind != LC_KIND_PQ);
}

void drain_close_late(void *handle)
{
    struct lc_entry *e = registry_claim_one(handle);
    if (e == NULL)
        return;
    struct work w = {.e = e, .ops = ops_for(e), .step = STEP_CLOSING};
    w.fd = w.ops->socket_fd(e);
    if (w.fd >= 0) {
        after_flush(&w, w.ops->flush(e, w.fd));
        /* A fresh connection has nothing buffered; whatever is not done at
         * once is cut rather than waited for. */
        discard_input(w.fd);
        if (w.step != STEP_DONE)
            shutdown(w.fd, SHUT_RDWR);
    }
    registry_release_drained(&e, 1);
}

void drain_run(int mode, int64_t start_ms, struct lc_drain_result *result)
{
    memset(result, 0, sizeof *result);
    const int64_t deadline = start_ms + lc_cfg.deadline_ms;
    int64_t grace_end = start_ms + lc_cfg.grace_ms;
    if (grace_end > deadline)
        grace_end = deadline;
    /* The close phase needs a little time of its own (write, FIN, EOF). */
    int64_t reserve = lc_cfg.deadline_ms / 5;
    if (reserve > 1000)
        reserve = 1000;
    const int64_t close_start = deadline - reserve;
    if (grace_end > close_start)
        grace_end = close_start;

    /* Phase gate: no new query, command or connection from here on. */
    gate_close(mode, deadline + 100);

    pid_t self = getpid();
    size_t cap = registry_count_owned(self) + 16;
    struct lc_entry **entries = calloc(cap, sizeof *entries);
    struct work *works = calloc(cap, sizeof *works);
    if (entries == NULL || works == NULL) {
        free(entries);
        free(works);
        gate_finish();
        return;
    }
    size_t n = registry_claim_for_drain(self, entries, cap);
    for (size_t i = 0; i < n; i++) {
        works[i].e = entries[i];
        works[i].ops = ops_for(entries[i]);
        works[i].fd = works[i].ops->socket_fd(entries[i]);
        works[i].step = works[i].fd >= 0 ? STEP_FLUSH : STEP_DONE;
    }
    /* PostgreSQL first: each goodbye wakes a backend that then spends a
     * millisecond or so exiting; started early, those exits overlap our work
     * on the Redis connections instead of preempting it. */
    qsort(works, n, sizeof *works, postgresql_first);
    phase_event("start", start_ms, n, "drain: %zu connection%s, deadline %lld ms, grace %lld ms",
                n, n == 1 ? "" : "s", (long long)lc_cfg.deadline_ms, (long long)lc_cfg.grace_ms);

    /* Phase grace: in-flight queries and commands may finish. */
    size_t busy;
    while ((busy = count_busy(works, n)) > 0 && lc_now_ms() < grace_end)
        sleep_ms(1);
    phase_event("grace", start_ms, busy, "drain: grace over, %zu still busy", busy);

    /* Phase cancel: PostgreSQL gets a cancel request; Redis is cut. */
    if (busy > 0) {
        struct lc_entry **to_cancel = calloc(n, sizeof *to_cancel);
        size_t nc = 0;
        for (size_t i = 0; i < n; i++) {
            struct work *w = &works[i];
            if (w->step == STEP_DONE || !is_busy(w))
                continue;
            if (w->ops->cancel && to_cancel) {
                to_cancel[nc++] = w->e;
            } else {
                shutdown(w->fd, SHUT_RDWR);
                w->step = STEP_DONE;
                result->cut++;
            }
        }
        start_cancels(to_cancel, nc);
        free(to_cancel);
        result->cancelled = nc;
        phase_event("cancel", start_ms, nc, "drain: %zu cancel request%s, %lu cut", nc,
                    nc == 1 ? "" : "s", result->cut);
        while (count_busy(works, n) > 0 && lc_now_ms() < close_start)
            sleep_ms(1);
    }

    refresh_inside();
    /* Phase close: whatever is still in use is cut; the rest gets its
     * buffered output, the protocol's goodbye and a FIN (goodbye() says when
     * we must then wait for the server to take what we sent). */
    for (size_t i = 0; i < n; i++) {
        struct work *w = &works[i];
        if (w->step == STEP_DONE)
            continue;
        if (thread_inside(w)) {
            shutdown(w->fd, SHUT_RDWR);
            w->step = STEP_DONE;
            result->cut++;
            continue;
        }
        w->step = STEP_CLOSING;
        after_flush(w, w->ops->flush(w->e, w->fd));
    }
    run_step(works, n, STEP_FLUSH, deadline - reserve / 2);
    run_step(works, n, STEP_AWAIT_EOF, deadline);

    /* Unread input at close time would turn the close into a reset: one poll
     * finds the sockets holding some. What did not finish is shut down. */
    discard_pending_input(works, n);
    for (size_t i = 0; i < n; i++) {
        struct work *w = &works[i];
        if (w->fd >= 0 && w->step != STEP_DONE)
            shutdown(w->fd, SHUT_RDWR);
        if (w->step == STEP_FLUSH || w->step == STEP_CUT)
            result->cut++;
        result->closed[w->e->kind]++;
    }
    registry_release_drained(entries, n);
    result->elapsed_ms = lc_now_ms() - start_ms;
    phase_event("close", start_ms, n, "drain: closed %zu, %lu cut", n, result->cut);
    free(entries);
    free(works);
}
