/* The retry timers of safepoint.h: a signal handler that found no safe
 * point asks the kernel to deliver the signal again a moment later, to this
 * thread (SIGEV_THREAD_ID, made with raw syscalls: glibc's timer_create
 * would start a thread for other notifications and lives in librt before
 * 2.34). */
#define _GNU_SOURCE
#include "platform/safepoint.h"

#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "core/arch.h"

#if defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__)
#define HAS_SHARED_RETRY 1 /* the diversion's (safepoint.c) */
#else
#define HAS_SHARED_RETRY 0
#endif
/* The park retry needs no diversion: every glibc architecture that knows the
 * loader's locks has it (loader_locks.c measures them). */
#define HAS_PARK_RETRY (HAS_SHARED_RETRY || LC_ARCH_SAFEPOINT_GENERIC)

#if HAS_PARK_RETRY

/* A timer whose expiry delivers SIG to the calling thread, with MARKER as its
 * value (how the handler tells a retry from a real signal). */
static int thread_timer_create(int sig, char *marker, int *id)
{
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_THREAD_ID;
    ev.sigev_signo = sig;
    ev.sigev_value.sival_ptr = marker;
    ev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
    return syscall(SYS_timer_create, CLOCK_MONOTONIC, &ev, id) == 0 ? 0 : -1;
}

static int timer_arm_once(int id, long delay_us)
{
    struct itimerspec when;
    memset(&when, 0, sizeof when);
    when.it_value.tv_sec = delay_us / 1000000;
    when.it_value.tv_nsec = (delay_us % 1000000) * 1000;
    return syscall(SYS_timer_settime, id, 0, &when, NULL) == 0 ? 0 : -1;
}

static int is_timer_of(const siginfo_t *info, const char *marker)
{
    return info && info->si_code == SI_TIMER && info->si_value.sival_ptr == marker;
}

#endif

#if HAS_SHARED_RETRY

static char retry_marker;
static int retry_state;     /* 0: none, 1: being made, 2: made (for retry_pid) */
static pid_t retry_pid;
static int retry_timer;     /* the kernel's timer id; its signal is the first retried one,
                             * and any retry does whatever work is pending */

int safepoint_retry(int sig, long delay_us)
{
    pid_t self = getpid();
    if (__atomic_load_n(&retry_state, __ATOMIC_ACQUIRE) == 2 && retry_pid != self)
        __atomic_store_n(&retry_state, 0, __ATOMIC_RELEASE); /* a fork child: none of its own */
    int none = 0;
    if (__atomic_compare_exchange_n(&retry_state, &none, 1, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
        int id;
        if (thread_timer_create(sig, &retry_marker, &id) != 0) {
            __atomic_store_n(&retry_state, 0, __ATOMIC_RELEASE);
            return -1;
        }
        retry_timer = id;
        retry_pid = self;
        __atomic_store_n(&retry_state, 2, __ATOMIC_RELEASE);
    }
    if (__atomic_load_n(&retry_state, __ATOMIC_ACQUIRE) != 2)
        return -1;
    return timer_arm_once(retry_timer, delay_us);
}

int safepoint_is_retry(const siginfo_t *info) { return is_timer_of(info, &retry_marker); }

#else /* not x86-64 Linux with glibc: no diversion, so nothing is retried */

int safepoint_retry(int sig, long delay_us) { (void)sig; (void)delay_us; return -1; }
int safepoint_is_retry(const siginfo_t *info) { (void)info; return 0; }

#endif

#if HAS_PARK_RETRY

/* A timer of each thread's own: several threads may wait to be parked. */
static char park_marker;
static __thread int park_timer_plus1 __attribute__((tls_model("initial-exec")));
static __thread pid_t park_timer_pid __attribute__((tls_model("initial-exec")));

int safepoint_park_retry(int sig, long delay_us)
{
    pid_t self = getpid();
    if (park_timer_plus1 == 0 || park_timer_pid != self) {
        int id;
        if (thread_timer_create(sig, &park_marker, &id) != 0)
            return -1;
        park_timer_plus1 = id + 1;
        park_timer_pid = self;
    }
    return timer_arm_once(park_timer_plus1 - 1, delay_us);
}

int safepoint_is_park_retry(const siginfo_t *info) { return is_timer_of(info, &park_marker); }

#else

int safepoint_park_retry(int sig, long delay_us) { (void)sig; (void)delay_us; return -1; }
int safepoint_is_park_retry(const siginfo_t *info) { (void)info; return 0; }

#endif
