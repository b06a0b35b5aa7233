/* Definitions shared by every file of the shim. */
#ifndef LC_H
#define LC_H

#include <fcntl.h>
#include <stdint.h>
#include <time.h>

#include "core/libc_compat.h"

#define LC_EXPORT __attribute__((visibility("default")))
/* Code every process runs while it starts (our constructor's path), kept
 * together with the constructor in .text.startup: the kernel maps a
 * library's code around each page fault in 64 KiB windows, so code spread
 * over the library costs every process (a shell, /bin/true) more resident
 * memory and faults (issue 13). */
#define LC_STARTUP __attribute__((section(".text.startup")))

/* What pthread_atfork calls. pthread_atfork itself comes from
 * libc_nonshared.a, linked at the far end of our code: calling it from a
 * constructor faulted in one more 64 KiB window of it in every process. */
extern int __register_atfork(void (*prepare)(void), void (*parent)(void), void (*child)(void),
                             void *dso_handle);
extern void *__dso_handle;
#define LC_LIKELY(x) __builtin_expect(!!(x), 1)
#define LC_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* The kinds of connection; each is described by its entry in the kind table
 * (kinds.h: struct lc_kind, lc_kinds[]). The numbers are the registry's. */
enum lc_kind_id {
    LC_KIND_PQ = 0,
    LC_KIND_REDIS = 1,
    LC_KIND_MYSQL = 2,
    LC_KIND_COUNT
};

/* Monotonic milliseconds; async-signal-safe (clock_gettime is). */
static inline int64_t lc_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline int64_t lc_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* The drain writes only to non-blocking sockets: a full one means "later". */
static inline void lc_set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && !(fl & O_NONBLOCK))
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* The CLOCK_REALTIME instant MS milliseconds from now, for pthread_cond_timedwait. */
static inline void lc_abstime_after_ms(int64_t ms, struct timespec *ts)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

#endif
