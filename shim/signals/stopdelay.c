#define _GNU_SOURCE
#include "signals/stopdelay.h"

#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/asfmt.h"
#include "core/config.h"
#include "core/log.h"
#include "core/clock.h"
#include "core/process.h"
#include "signals/internal.h"
#include "signals/signals.h"

/* si_value of our expiries: the address of something of ours, which no other
 * timer or sigqueue() in the program can carry by accident. */
static const char timer_marker;

static int64_t delay_ms;
static sigset_t delayed;
static timer_t timers[NSIG];
static int have_timer[NSIG];
/* Timers belong to the process that made them: a child that missed
 * stopdelay_atfork_child (a raw clone) must not arm an id that is not its
 * own, or that its program reused. */
static pid_t timers_pid;

static void create_timers(void)
{
    for (int sig = 1; sig < NSIG; sig++) {
        have_timer[sig] = 0;
        if (sigismember(&delayed, sig) != 1)
            continue;
        struct sigevent ev;
        memset(&ev, 0, sizeof ev);
        ev.sigev_notify = SIGEV_SIGNAL;
        ev.sigev_signo = sig;
        ev.sigev_value.sival_ptr = (void *)&timer_marker;
        have_timer[sig] = timer_create(CLOCK_MONOTONIC, &ev, &timers[sig]) == 0;
    }
    timers_pid = getpid();
}

int stopdelay_init(int64_t ms, const sigset_t *set)
{
    delay_ms = ms;
    delayed = *set;
    int saved = errno;
    create_timers();
    errno = saved;
    for (int sig = 1; sig < NSIG; sig++)
        if (sigismember(&delayed, sig) == 1 && !have_timer[sig])
            return -1;
    return 0;
}

void stopdelay_atfork_child(void)
{
    if (delay_ms <= 0)
        return;
    int saved = errno;
    create_timers();
    errno = saved;
}

int stopdelay_is_timer(const siginfo_t *info)
{
    return info != NULL && info->si_code == SI_TIMER &&
           info->si_value.sival_ptr == (void *)&timer_marker;
}

static int usable(int sig)
{
    return delay_ms > 0 && sig > 0 && sig < NSIG && have_timer[sig] && timers_pid == getpid();
}

int stopdelay_arm(int sig)
{
    if (!usable(sig))
        return -1;
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    its.it_value.tv_sec = delay_ms / 1000;
    its.it_value.tv_nsec = (long)(delay_ms % 1000) * 1000000;
    return timer_settime(timers[sig], 0, &its, NULL) == 0 ? 0 : -1;
}

void stopdelay_disarm(int sig)
{
    if (!usable(sig))
        return;
    struct itimerspec zero;
    memset(&zero, 0, sizeof zero);
    timer_settime(timers[sig], 0, &zero, NULL);
}

/* ---- a log line without stdio ---- */

/* gmtime_r takes glibc's timezone lock: the civil date is computed here
 * (days since 1970-01-01 to year/month/day, proleptic Gregorian). */
static void put_utc(struct asfmt *l)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t secs = ts.tv_sec;
    int64_t days = secs / 86400, rem = secs % 86400;
    int64_t z = days + 719468;
    int64_t era = z / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = yoe + era * 400;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1;
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    if (m <= 2)
        y++;
    asfmt_num(l, y, 4);
    asfmt_str(l, "-");
    asfmt_num(l, m, 2);
    asfmt_str(l, "-");
    asfmt_num(l, d, 2);
    asfmt_str(l, "T");
    asfmt_num(l, rem / 3600, 2);
    asfmt_str(l, ":");
    asfmt_num(l, rem % 3600 / 60, 2);
    asfmt_str(l, ":");
    asfmt_num(l, rem % 60, 2);
    asfmt_str(l, ".");
    asfmt_num(l, ts.tv_nsec / 1000000, 3);
    asfmt_str(l, "Z");
}

static void put_message(struct asfmt *l, enum stopdelay_event ev, const char *name,
                        int64_t elapsed_ms)
{
    asfmt_str(l, "SIG");
    asfmt_str(l, name);
    switch (ev) {
    case STOPDELAY_BEGIN:
        asfmt_str(l, ": stop delay of ");
        asfmt_num(l, delay_ms, 1);
        asfmt_str(l, " ms begins; the program keeps serving");
        break;
    case STOPDELAY_OVER:
        asfmt_str(l, ": stop delay over after ");
        asfmt_num(l, elapsed_ms, 1);
        asfmt_str(l, " ms; the signal goes on");
        break;
    case STOPDELAY_DROPPED:
        asfmt_str(l, ": stop delay over after ");
        asfmt_num(l, elapsed_ms, 1);
        asfmt_str(l, " ms, but the program is exiting on its own: the signal is dropped");
        break;
    case STOPDELAY_CUT:
        asfmt_str(l, " again during the stop delay (after ");
        asfmt_num(l, elapsed_ms, 1);
        asfmt_str(l, " ms): the signal goes on at once");
        break;
    }
}

void stopdelay_log(enum stopdelay_event ev, int sig, int64_t elapsed_ms)
{
    if (lc_log_level < LC_LOG_INFO)
        return;
    int saved = errno;
    const char *name = config_signal_name(sig);
    if (name == NULL)
        name = "?";
    struct asfmt l = {.n = 0};
    if (lc_cfg.log_format == LC_FORMAT_JSON) {
        asfmt_str(&l, "{\"time\":\"");
        put_utc(&l);
        asfmt_str(&l, "\",\"pid\":");
        asfmt_num(&l, getpid(), 1);
        asfmt_str(&l, ",\"level\":\"info\",\"event\":\"");
        asfmt_str(&l, ev == STOPDELAY_BEGIN ? "stop_delay_start" : "stop_delay_end");
        asfmt_str(&l, "\",\"message\":\"");
        put_message(&l, ev, name, elapsed_ms);
        asfmt_str(&l, "\",\"signal\":\"");
        asfmt_str(&l, name);
        asfmt_str(&l, "\",\"delay_ms\":");
        asfmt_num(&l, delay_ms, 1);
        if (ev != STOPDELAY_BEGIN) {
            asfmt_str(&l, ",\"elapsed_ms\":");
            asfmt_num(&l, elapsed_ms, 1);
            asfmt_str(&l, ",\"cut_short\":");
            asfmt_str(&l, ev == STOPDELAY_CUT ? "true" : "false");
            if (ev == STOPDELAY_DROPPED)
                asfmt_str(&l, ",\"dropped\":true");
        }
        asfmt_str(&l, "}");
    } else {
        asfmt_str(&l, "lastcall[");
        asfmt_num(&l, getpid(), 1);
        asfmt_str(&l, "]: ");
        put_message(&l, ev, name, elapsed_ms);
    }
    l.b[l.n++] = '\n';
    /* One write, as log.c does, so lines do not interleave. */
    int fd = lc_log_fd();
    size_t off = 0;
    while (off < l.n) {
        ssize_t w = write(fd, l.b + off, l.n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    errno = saved;
}

/* ---- the policy: what the handler does with a managed signal ---- */

/* LASTCALL_STOP_DELAY: the first managed signal is held (HOLDING) while a
 * timer runs; its expiry, or a second managed signal, ends the hold (OVER)
 * and a signal goes on as usual. Only the handler moves the state, by
 * compare-and-swap (several threads may take managed signals at once). */
enum { DELAY_NONE, DELAY_HOLDING, DELAY_OVER };
static int delay_state;
static int delay_sig;
static siginfo_t delay_info;
static int64_t delay_start_ms;

void signals_atfork_child(void)
{
    /* The child has no pending signal and no timer of the parent's: a hold
     * under way in the parent is the parent's. */
    __atomic_store_n(&delay_state, DELAY_NONE, __ATOMIC_RELEASE);
    stopdelay_atfork_child();
}

enum delay_verdict stop_delay(int sig, siginfo_t **info)
{
    if (stopdelay_is_timer(*info)) {
        int holding = DELAY_HOLDING;
        if (sig != __atomic_load_n(&delay_sig, __ATOMIC_ACQUIRE) ||
            !__atomic_compare_exchange_n(&delay_state, &holding, DELAY_OVER, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
            return DELAY_HELD; /* an expiry queued before a second signal cut the hold */
        if (signals_sink->drain_requested()) {
            /* The program called exit() during the delay and its exit drain
             * is under way: the held signal would only cut that short. */
            stopdelay_log(STOPDELAY_DROPPED, sig, lc_now_ms() - delay_start_ms);
            return DELAY_HELD;
        }
        stopdelay_log(STOPDELAY_OVER, sig, lc_now_ms() - delay_start_ms);
        *info = &delay_info;
        return DELAY_GO_ON;
    }
    int state = __atomic_load_n(&delay_state, __ATOMIC_ACQUIRE);
    if (state == DELAY_NONE && lc_cfg.stop_delay_ms > 0 &&
        __atomic_compare_exchange_n(&delay_state, &state, DELAY_HOLDING, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
        delay_info = **info;
        delay_start_ms = lc_now_ms();
        __atomic_store_n(&delay_sig, sig, __ATOMIC_RELEASE);
        if (stopdelay_arm(sig) == 0) {
            stopdelay_log(STOPDELAY_BEGIN, sig, 0);
            return DELAY_HELD;
        }
        /* No timer in this process: no delay. */
        __atomic_store_n(&delay_state, DELAY_OVER, __ATOMIC_RELEASE);
        return DELAY_GO_ON;
    }
    int holding = DELAY_HOLDING;
    if (state == DELAY_HOLDING &&
        __atomic_compare_exchange_n(&delay_state, &holding, DELAY_OVER, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
        /* A second signal: the user means it now. */
        stopdelay_disarm(__atomic_load_n(&delay_sig, __ATOMIC_ACQUIRE));
        stopdelay_log(STOPDELAY_CUT, sig, lc_now_ms() - delay_start_ms);
    }
    return DELAY_GO_ON;
}
