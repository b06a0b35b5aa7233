/* How the process dies by a managed signal, as it would have without
 * lastcall. */
#define _GNU_SOURCE
#include "signals/signals.h"

#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "signals/internal.h"

void signals_die(int sig)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    real_sigaction(sig, &dfl, NULL);
    if (getpid() != 1) {
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, sig);
        pthread_sigmask(SIG_UNBLOCK, &one, NULL);
        raise(sig);
    }
    _exit(128 + sig);
}

/* Leaves the signal pending with the default disposition: it kills the
 * process as soon as the handler returns and unblocks it. */
void die_on_return(int sig)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    real_sigaction(sig, &dfl, NULL);
    if (getpid() == 1)
        _exit(128 + sig); /* the kernel would drop it for init */
    raise(sig);
}

void park_until_death(void)
{
    /* The program's own code must not run on after a signal that would have
     * killed it. Further managed signals stay deliverable: a second one ends
     * the process at once. */
    sigset_t wait_mask;
    sigfillset(&wait_mask);
    for (int s = 1; s < NSIG; s++)
        if (managed[s] && s != status_sig && s != remote_sig)
            sigdelset(&wait_mask, s);
    for (;;)
        sigsuspend(&wait_mask);
}
