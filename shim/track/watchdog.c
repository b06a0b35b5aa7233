/* The watchdog (watchdog.h): one helper thread per process shuts a socket
 * down when a bounded call's time is up. */
#define _GNU_SOURCE
#include "track/watchdog.h"

#include <pthread.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "track/threads.h"

#define BOUNDED_SLOTS 32
static struct {
    int fd;            /* -1: free */
    int fired;
    int64_t until_ms;
} bounded[BOUNDED_SLOTS];
static pthread_mutex_t bounded_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t bounded_cond;
static pid_t bounded_pid; /* the process whose watchdog thread runs */

static void *watchdog_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&bounded_lock);
    for (;;) {
        int64_t now = lc_now_ms(), next = -1;
        for (int i = 0; i < BOUNDED_SLOTS; i++) {
            if (bounded[i].fd < 0 || bounded[i].fired)
                continue;
            if (bounded[i].until_ms <= now) {
                shutdown(bounded[i].fd, SHUT_RDWR);
                bounded[i].fired = 1;
            } else if (next < 0 || bounded[i].until_ms < next) {
                next = bounded[i].until_ms;
            }
        }
        if (next < 0) {
            pthread_cond_wait(&bounded_cond, &bounded_lock);
        } else {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            int64_t left = next - now;
            ts.tv_sec += left / 1000;
            ts.tv_nsec += (long)(left % 1000) * 1000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&bounded_cond, &bounded_lock, &ts);
        }
    }
    return NULL;
}

static void bounded_atfork_prepare(void)
{
    pthread_mutex_lock(&bounded_lock);
}

static void bounded_atfork_parent(void)
{
    pthread_mutex_unlock(&bounded_lock);
}

/* The forking thread took the lock in the prepare handler: it unlocks it,
 * as every other fork handler does (re-initialising a mutex that is held is
 * undefined, and ThreadSanitizer flags it). */
static void bounded_atfork_child(void)
{
    pthread_mutex_unlock(&bounded_lock);
}

/* Called with bounded_lock held. A fork child has no watchdog thread (and
 * only the forking thread): it starts its own. */
static int watchdog_ready(void)
{
    pid_t self = getpid();
    if (bounded_pid == self)
        return 1;
    static int atfork_done;
    if (!atfork_done) {
        atfork_done = 1;
        pthread_atfork(bounded_atfork_prepare, bounded_atfork_parent, bounded_atfork_child);
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&bounded_cond, &ca);
    pthread_condattr_destroy(&ca);
    for (int i = 0; i < BOUNDED_SLOTS; i++)
        bounded[i].fd = -1;
    int ok = lc_helper_thread(watchdog_main, NULL, 64 * 1024) == 0;
    if (ok)
        bounded_pid = self;
    return ok;
}

int bounded_begin(int fd, int64_t until_ms)
{
    if (fd < 0 || lc_now_ms() >= until_ms)
        return -1;
    int slot = -1;
    pthread_mutex_lock(&bounded_lock);
    if (watchdog_ready()) {
        for (int i = 0; i < BOUNDED_SLOTS && slot < 0; i++)
            if (bounded[i].fd < 0)
                slot = i;
        if (slot >= 0) {
            bounded[slot].fd = fd;
            bounded[slot].fired = 0;
            bounded[slot].until_ms = until_ms;
            pthread_cond_signal(&bounded_cond);
        }
    }
    pthread_mutex_unlock(&bounded_lock);
    return slot;
}

int bounded_end(int slot)
{
    pthread_mutex_lock(&bounded_lock);
    int fired = bounded[slot].fired;
    bounded[slot].fd = -1;
    pthread_mutex_unlock(&bounded_lock);
    return fired;
}
