/* Shared between the files of signals/ only: the handler (handler.c), the
 * virtual dispositions (dispositions.c), the lazy diversion (lazy.c) and the
 * stop delay (stopdelay.c). */
#ifndef LC_SIGNALS_INTERNAL_H
#define LC_SIGNALS_INTERNAL_H

#include <signal.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- handler.c ---- */
/* The layers above, as the composition root gave them (signals_install). */
extern const struct signals_sink *signals_sink;
extern int managed[NSIG];
extern int status_sig;
/* LC_STATUS_SIGNAL, for `lastcall status PID`: taken over only for requests
 * that carry our magic; anything else gets the program's disposition. */
extern int remote_sig;
void lc_signal_handler(int sig, siginfo_t *info, void *uctx);
int is_managed(int sig);
/* Leaves the signal pending with the default disposition: it kills the
 * process as soon as the handler returns and unblocks it. */
void die_on_return(int sig);
void park_until_death(void);
void call_program(int sig, const struct sigaction *v, siginfo_t *info, void *uctx);

/* ---- dispositions.c ---- */
int real_sigaction(int sig, const struct sigaction *act, struct sigaction *old);
/* The program's view of SIG: its virtual table entry. */
struct sigaction *vact(int sig);
/* Anywhere, a signal handler included: a copy no writer was changing. */
void virtual_read(int sig, struct sigaction *out);
/* The program changed the disposition behind our back (a raw rt_sigaction
 * syscall): the kernel holds its choice, and we leave it there. */
extern int foreign[NSIG];

/* A disposition is SIG_DFL, SIG_IGN or a function, whatever SA_SIGINFO says:
 * sa_handler and sa_sigaction share storage, so SIG_DFL with SA_SIGINFO is a
 * NULL sa_sigaction (PHP resets its SIGTERM handler that way, then re-raises),
 * and SIG_IGN is (void *)1 under either flag. Nothing else may decide whether
 * a handler can be called. */
enum disposition { DISP_DEFAULT, DISP_IGNORE, DISP_FUNCTION };

static inline enum disposition disposition_of(const struct sigaction *a)
{
    if (a->sa_handler == SIG_DFL)
        return DISP_DEFAULT;
    if (a->sa_handler == SIG_IGN)
        return DISP_IGNORE;
    return DISP_FUNCTION;
}

/* ---- lazy.c ---- */
/* A signal drain in a process that has no drain thread yet (safepoint.h):
 * the signal waits for a safe point to start it. */
extern int lazy_sig;
extern int64_t lazy_start_ms;
extern int lazy_inflight;
extern pid_t lazy_pid;
extern uint64_t lazy_token;
extern int64_t lazy_token_ms;
int lazy_drain_pending(void);
void lazy_try(int sig, void *uctx, const siginfo_t *delivered);
void park_or_retry(int sig, const void *uctx, const siginfo_t *info);

/* ---- stopdelay.c ---- */
enum delay_verdict { DELAY_GO_ON, DELAY_HELD };
/* Decides what the stop delay does with SIG. On DELAY_GO_ON *INFO may have
 * been replaced by the held signal's own siginfo. */
enum delay_verdict stop_delay(int sig, siginfo_t **info);
void signals_atfork_child(void);

#endif
