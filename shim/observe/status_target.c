/* The library's side of `lastcall status PID` (see status.h): recognise the
 * request in the signal handler, answer from the drain thread. */
#define _GNU_SOURCE
#include "observe/status_target.h"
#include "core/status_protocol.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "track/threads.h"
#include "core/asfmt.h"
#include "track/inflight.h"
#include "track/kind.h"
#include "core/clock.h"
#include "core/registry.h"
#include "core/process.h"
#include "core/stacks.h"

int status_is_request(int sig, const siginfo_t *info)
{
    return sig == LC_STATUS_SIGNAL && info != NULL && info->si_code == SI_QUEUE &&
           status_token_valid((uint64_t)(uintptr_t)info->si_value.sival_ptr);
}

static socklen_t socket_name(uint64_t token, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    struct asfmt name = {.n = 0};
    name.b[name.n++] = '\0'; /* abstract: no file anywhere */
    asfmt_str(&name, LC_STATUS_NAME_PREFIX);
    asfmt_hex(&name, status_token_nonce(token), 8);
    memcpy(sa->sun_path, name.b, name.n);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + name.n);
}

/* Connects to the asker's socket. Non-blocking: a full backlog must not hold
 * up the caller (a signal handler, or the drain thread). Async-signal-safe. */
static int connect_asker(uint64_t token)
{
    struct sockaddr_un sa;
    socklen_t len = socket_name(token, &sa);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, len) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Writes everything, waiting for the reader at most 5 s in all. */
static void send_all(int fd, const char *buf, size_t n)
{
    int64_t until = lc_now_ms() + 5000;
    size_t off = 0;
    while (off < n) {
        ssize_t w = send(fd, buf + off, n - off, MSG_NOSIGNAL);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            int64_t left = until - lc_now_ms();
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            if (left > 0 && poll(&p, 1, (int)left) >= 0)
                continue;
        }
        return;
    }
}

/* No drain thread in this process: it has never opened a connection (or
 * could not start the thread). The answer fits in one buffer, written from
 * the handler. */
void status_answer_inline(uint64_t token)
{
    int fd = connect_asker(token);
    if (fd < 0)
        return;
    struct asfmt l = {.n = 0};
    asfmt_str(&l, LC_STATUS_VERSION_LINE "\npid\t");
    asfmt_num(&l, getpid(), 1);
    asfmt_str(&l, "\n");
    char exe[256];
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (el > 0) {
        exe[el] = '\0';
        for (ssize_t i = 0; i < el; i++)
            if (exe[i] == '\t' || exe[i] == '\n')
                exe[i] = '?';
        asfmt_str(&l, "program\t");
        asfmt_str(&l, exe);
        asfmt_str(&l, "\n");
    }
    for (int k = 0; k < lc_kind_count; k++) {
        asfmt_str(&l, "kind\t");
        asfmt_str(&l, lc_kind_of(k)->json);
        asfmt_str(&l, "\t");
        asfmt_str(&l, lc_kind_of(k)->name);
        asfmt_str(&l, lc_kind_of(k)->always_listed ? "\t1" : "\t0");
        asfmt_str(&l, lc_kind_of(k)->in_transaction ? "\t1\n" : "\t0\n");
    }
    if (registry_owned_live() > 0)
        asfmt_str(&l, "error\tthe process has no drain thread: no snapshot can be taken\n");
    asfmt_str(&l, "end\n");
    send_all(fd, l.b, l.n);
    close(fd);
}

/* ---- the snapshot, on the drain thread ---- */

/* Fields hold no tab or newline. */
static void field(FILE *f, const char *s)
{
    fputc('\t', f);
    for (; s && *s; s++)
        fputc(*s == '\t' || *s == '\n' || *s == '\r' ? ' ' : *s, f);
}

static const char *kind_word(int kind)
{
    return lc_kind_of(kind)->json;
}

static void write_connections(FILE *f, struct lc_entry *entries, size_t n, int64_t now_real)
{
    void *inside[1024];
    size_t n_inside = inflight_snapshot(inside, 1024);
    for (size_t i = 0; i < n; i++) {
        struct lc_entry *e = &entries[i];
        const char *state;
        if (e->failed)
            state = "failed";
        else if (inflight_contains(inside, n_inside, e->handle))
            state = "in_flight";
        else if (e->in_transaction)
            state = "idle_in_transaction";
        else
            state = "idle";
        fprintf(f, "conn\t%s\t%s\t%lld", kind_word(e->kind), state,
                (long long)(now_real - e->opened_at_ms));
        field(f, e->target);
        fputc('\n', f);
    }
}

/* Grouped as in the leak report: kind, failed, target and opening stack. */
static void write_stacks(FILE *f, struct lc_entry *entries, size_t n)
{
    char *done = calloc(n ? n : 1, 1);
    if (done == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        if (done[i])
            continue;
        const struct lc_entry *a = &entries[i];
        size_t count = 0;
        int64_t first = a->opened_at_ms;
        for (size_t j = i; j < n; j++) {
            const struct lc_entry *b = &entries[j];
            if (done[j] || a->kind != b->kind || a->failed != b->failed ||
                strcmp(a->target, b->target) != 0 || !stack_equal(a->stack, b->stack))
                continue;
            done[j] = 1;
            count++;
            if (b->opened_at_ms < first)
                first = b->opened_at_ms;
        }
        fprintf(f, "group\t%s\t%zu\t%d\t%lld", kind_word(a->kind), count, a->failed,
                (long long)first);
        field(f, a->target);
        fputc('\n', f);
        if (a->stack == NULL || a->stack->depth == 0)
            continue;
        struct lc_frame frames[LC_MAX_STACK_DEPTH];
        stack_symbolize(a->stack, frames);
        for (int k = 0; k < a->stack->depth; k++) {
            char line[800];
            stack_format_frame(&frames[k], k, line, sizeof line);
            fputs("frame", f);
            field(f, line);
            field(f, frames[k].function);
            field(f, frames[k].file);
            fprintf(f, "\t%d", frames[k].line);
            field(f, frames[k].module);
            fprintf(f, "\t0x%lx\n", (unsigned long)frames[k].offset);
        }
    }
    free(done);
}

static int asker_allowed(int fd)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
        return 0;
    /* The signal already proved the sender may act on this process; the
     * socket must be one that sender's user (or root) made. */
    return cred.uid == 0 || cred.uid == getuid() || cred.uid == geteuid();
}

static void answer_now(uint64_t token)
{
    int fd = connect_asker(token);
    if (fd < 0)
        return;
    if (!asker_allowed(fd)) {
        close(fd);
        return;
    }
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    if (f == NULL) {
        close(fd);
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now_real = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    char exe[512] = "";
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[el > 0 ? el : 0] = '\0';
    fprintf(f, LC_STATUS_VERSION_LINE "\npid\t%d\nprogram", (int)getpid());
    field(f, exe);
    fprintf(f, "\nnow_ms\t%lld\n", (long long)now_real);
    /* The kind table, so that the launcher names no kind itself. */
    for (int k = 0; k < lc_kind_count; k++)
        fprintf(f, "kind\t%s\t%s\t%d\t%d\n", lc_kind_of(k)->json, lc_kind_of(k)->name,
                lc_kind_of(k)->always_listed, lc_kind_of(k)->in_transaction != NULL);
    struct lc_entry *entries = NULL;
    size_t n = registry_snapshot(getpid(), -1, &entries);
    write_connections(f, entries, n, now_real);
    if (status_token_flags(token) & LC_STATUS_STACKS)
        write_stacks(f, entries, n);
    registry_free_snapshot(entries, n);
    fputs("end\n", f);
    if (fclose(f) == 0)
        send_all(fd, buf, size);
    free(buf);
    close(fd);
}

static void *answer_thread(void *arg)
{
    answer_now((uint64_t)(uintptr_t)arg);
    return NULL;
}

void status_answer(uint64_t token)
{
    /* Symbolizing stacks runs addr2line (up to seconds): on a thread of its
     * own, so that a SIGTERM meanwhile is not kept waiting for the drain
     * thread. This process has threads already (the drain thread). */
    if (lc_helper_thread(answer_thread, (void *)(uintptr_t)token, 256 * 1024) != 0)
        answer_now(token);
}
