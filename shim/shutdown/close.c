/* Closing connections the way each protocol means: flush, settle, the
 * goodbye, and waiting for the server to have read it; also the program's
 * own close once shutdown has begun, and a connect that returned late. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/sockios.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/process.h"
#include "core/registry.h"
#include "shutdown/internal.h"

/* Reads and drops whatever the server sent; returns 1 at EOF or error. */
int discard_input(int fd)
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

void after_flush(struct work *w, int f)
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

void discard_pending_input(struct work *works, size_t n)
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
int close_round(struct work *works, size_t n, struct pollfd *fds, size_t *idx,
                int64_t flush_until, int64_t settle_until, int64_t until_ms, int max_wait_ms)
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
void close_loop(struct work *works, size_t n, int64_t flush_until, int64_t settle_until,
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
int64_t close_reserve(void)
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

