/* `lastcall status PID`: the request and the answer, shared by the launcher
 * (status_client.c) and the library (status_target.c).
 *
 * The launcher binds a listening unix socket in the abstract namespace
 * ("\0lastcall-status-NONCE": no file), then sigqueue()s LC_STATUS_SIGNAL to
 * the process with a value that carries a magic number, the flags and the
 * nonce. lastcall's handler for that signal recognises the value (si_code
 * SI_QUEUE and the magic: anything else goes to the program's own
 * disposition, as without lastcall), and the drain thread connects and
 * writes the answer: lines of tab-separated fields (status_target.c), which
 * the launcher renders as text or JSON. A process never asked has nothing
 * but the handler: no thread, no socket, no file. */
#ifndef LC_STATUS_H
#define LC_STATUS_H

#include <signal.h>
#include <stdint.h>

/* A realtime signal far from SIGRTMIN, where programs usually start theirs. */
#define LC_STATUS_SIGNAL (SIGRTMAX - 7)

#define LC_STATUS_MAGIC 0x1c57a7ULL /* 24 bits */
#define LC_STATUS_JSON 1u           /* flags: informative; rendering is the launcher's */
#define LC_STATUS_STACKS 2u

static inline uint64_t status_token(unsigned flags, uint32_t nonce)
{
    return LC_STATUS_MAGIC << 40 | (uint64_t)(flags & 0xff) << 32 | nonce;
}

static inline int status_token_valid(uint64_t token)
{
    return token >> 40 == LC_STATUS_MAGIC;
}

static inline unsigned status_token_flags(uint64_t token)
{
    return (unsigned)(token >> 32) & 0xff;
}

static inline uint32_t status_token_nonce(uint64_t token)
{
    return (uint32_t)token;
}

/* "\0lastcall-status-" + 8 hex digits. */
#define LC_STATUS_NAME_PREFIX "lastcall-status-"

/* Answer lines (fields separated by tabs, no tab or newline inside one):
 *   lastcall-status 1
 *   pid PID / program PATH / now_ms REALTIME_MS
 *   kind KIND TITLE LISTED HAS_TX          one per line of the kind table, in its
 *                                          order: KIND as in JSON, TITLE as in text,
 *                                          LISTED 1 when shown even with none open,
 *                                          HAS_TX 1 when it reports transactions
 *   conn KIND STATE AGE_MS TARGET          KIND: a kind line's KIND,
 *                                          STATE: in_flight|idle|idle_in_transaction|failed
 *   group KIND COUNT FAILED FIRST_OPENED_MS TARGET    (with --stacks)
 *   frame FORMATTED FUNCTION FILE LINE MODULE OFFSET  (after its group)
 *   error MESSAGE
 *   end */
#define LC_STATUS_VERSION_LINE "lastcall-status 1"


/* In the launcher: `lastcall status ...` (ARGV[0] is "status"). */
int status_main(int argc, char **argv);

#endif
