/* Shared between the files of shutdown/ only: the drain's phases
 * (drain.c), the closing rounds (close.c) and the cancel helpers (cancel.c). */
#ifndef LC_SHUTDOWN_INTERNAL_H
#define LC_SHUTDOWN_INTERNAL_H

#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "core/log.h"
#include "shutdown/drain.h"

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


static inline const struct lc_kind *ops_for(const struct lc_entry *e)
{
    return lc_kind_of(e->kind);
}

static inline void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}


/* ---- drain.c ---- */
/* Is W busy: a thread inside it, or the server working for it? */
int is_busy(struct work *w);
int thread_inside(const struct work *w);
void refresh_inside(void);

/* ---- cancel.c ---- */
struct cancel_job;
/* Starts cancel requests for ENTRIES on helper threads; OWNED is a copy the
 * job frees. Returns the job (release it with job_release), or NULL when
 * nothing runs. */
struct cancel_job *start_cancels(struct lc_entry **entries, size_t count,
                                 struct lc_entry *owned);
/* 1 when every cancel finished by UNTIL_MS. */
int cancels_wait(struct cancel_job *job, int64_t until_ms);
void job_release(struct cancel_job *job);

/* ---- close.c ---- */
int discard_input(int fd);
void discard_pending_input(struct work *works, size_t n);
/* One round of closing: every connection's next step, then one poll of at
 * most MAX_WAIT_MS. Returns how many are not done. */
int close_round(struct work *works, size_t n, struct pollfd *fds, size_t *idx,
                int64_t flush_until, int64_t settle_until, int64_t until_ms, int max_wait_ms);
/* Rounds until every connection is done or UNTIL_MS. */
void close_loop(struct work *works, size_t n, int64_t flush_until, int64_t settle_until,
                int64_t until_ms);
void after_flush(struct work *w, int f);
/* The close reserve: a fifth of the deadline, at most 1 s. */
int64_t close_reserve(void);

#endif
