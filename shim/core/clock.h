/* The monotonic clock in milliseconds and microseconds, and deadlines for
 * pthread_cond_timedwait. */
#ifndef LC_CLOCK_H
#define LC_CLOCK_H

#include <stdint.h>
#include <time.h>

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
