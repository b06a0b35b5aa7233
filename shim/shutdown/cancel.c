/* The cancel helpers: a cancel request (PQcancel, MySQL's KILL) blocks
 * (connect, send, recv), so it runs on helper threads. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "shutdown/internal.h"
#include "track/threads.h"

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

void job_release(struct cancel_job *job)
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
struct cancel_job *start_cancels(struct lc_entry **entries, size_t count,
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
int cancels_wait(struct cancel_job *job, int64_t until_ms)
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

