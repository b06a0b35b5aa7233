#define _GNU_SOURCE
#include "platform/deadline.h"

#include "core/process.h"

#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SIGEV_THREAD_ID
#define SIGEV_THREAD_ID 4
#endif

/* The kernel's struct sigevent, spelled out: glibc names the thread id field
 * _sigev_un._tid before 2.35 and sigev_notify_thread_id after, musl only the
 * latter. Raw timer_create/timer_settime calls take this layout (64 bytes). */
struct kernel_sigevent {
    union sigval value;
    int signo;
    int notify;
    union {
        int tid;
        int pad[(64 - sizeof(union sigval) - 2 * sizeof(int)) / sizeof(int)];
    } un;
};

static char expiry_marker;       /* its address marks our expiry's siginfo */
static int timer_id;             /* the kernel's timer id, valid in timer_pid */
static pid_t timer_pid;          /* timers do not survive fork */
static int busy;                 /* one arm/move at a time; handlers may race */
static struct lc_deadline_end ending;

static int settime(int64_t at_ms)
{
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    if (at_ms > 0) {
        its.it_value.tv_sec = at_ms / 1000;
        its.it_value.tv_nsec = (long)(at_ms % 1000) * 1000000;
    }
    /* An absolute time already past fires at once, as it should. */
    return (int)syscall(SYS_timer_settime, timer_id, at_ms > 0 ? TIMER_ABSTIME : 0, &its, NULL);
}

static int acquire(void)
{
    int zero = 0;
    return __atomic_compare_exchange_n(&busy, &zero, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

static void release(void)
{
    __atomic_store_n(&busy, 0, __ATOMIC_RELEASE);
}

int deadline_arm(int deliver, int64_t at_ms, struct lc_deadline_end end)
{
    /* Another thread arming at this very moment (two signals at once) sets
     * a timer as good as ours; spinning here could deadlock a handler. */
    if (!acquire())
        return 0;
    pid_t self = getpid();
    int r = 0;
    if (__atomic_load_n(&timer_pid, __ATOMIC_ACQUIRE) != self) {
        struct kernel_sigevent sev;
        memset(&sev, 0, sizeof sev);
        sev.value.sival_ptr = &expiry_marker;
        sev.signo = deliver;
        sev.notify = SIGEV_THREAD_ID;
        sev.un.tid = (int)syscall(SYS_gettid);
        int id = -1;
        if (deliver <= 0 || syscall(SYS_timer_create, CLOCK_MONOTONIC, &sev, &id) != 0) {
            release();
            return -1;
        }
        timer_id = id;
        ending = end;
        __atomic_store_n(&timer_pid, self, __ATOMIC_RELEASE);
    }
    r = settime(at_ms) == 0 ? 0 : -1;
    release();
    return r;
}

static int armed_here(void)
{
    return __atomic_load_n(&timer_pid, __ATOMIC_ACQUIRE) == getpid();
}

void deadline_disarm(void)
{
    if (armed_here() && acquire()) {
        settime(0);
        release();
    }
}

void deadline_move(int64_t at_ms)
{
    if (armed_here() && acquire()) {
        settime(at_ms);
        release();
    }
}

int deadline_is_expiry(const siginfo_t *info, struct lc_deadline_end *end)
{
    if (info == NULL || info->si_code != SI_TIMER ||
        info->si_value.sival_ptr != (void *)&expiry_marker || !armed_here())
        return 0;
    *end = ending;
    return 1;
}

int64_t deadline_budget_ms(void)
{
    return lc_cfg.deadline_ms + LC_DEADLINE_MARGIN_MS +
           (lc_cfg.report_path ? LC_REPORT_ALLOWANCE_MS : 0);
}
