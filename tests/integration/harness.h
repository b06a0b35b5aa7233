/* Shared by the integration tests: real servers started per test binary
 * (tests/harness/servers.sh), programs run with or without the shim, and
 * what the servers saw. */
#ifndef LC_TEST_HARNESS_H
#define LC_TEST_HARNESS_H

#include <stdint.h>
#include <sys/types.h>

/* Custom criterion main: starts the servers, runs the tests one at a time. */
#define LC_TEST_MAIN                                                                           \
    int main(int argc, char **argv)                                                            \
    {                                                                                          \
        return harness_main(argc, argv);                                                       \
    }
int harness_main(int argc, char **argv);

struct proc {
    pid_t pid;
    int out_fd;     /* child's stdout (and stderr when merged) */
    int err_fd;     /* child's stderr */
    int in_fd;      /* child's stdin, or -1 */
    int64_t started_us;
    char out[65536];
    size_t out_len;
    char err[65536];
    size_t err_len;
};

struct run_opts {
    int preload;                /* LD_PRELOAD the shim */
    const char *const *env;     /* extra KEY=VALUE, NULL-terminated */
    int keep_stdin;             /* give the child a pipe on stdin */
    const char *app;            /* PGAPPNAME */
};

/* Starts argv[0] (looked up in PATH when no slash). */
void proc_start(struct proc *p, const struct run_opts *o, const char *const *argv);
/* Reads stdout until a line containing NEEDLE; returns 0, or -1 at timeout/EOF. */
int proc_wait_for(struct proc *p, const char *needle, int timeout_ms);
/* The same on stderr. */
int proc_wait_for_err(struct proc *p, const char *needle, int timeout_ms);
/* Waits for exit, collecting output; returns the wait status, or -1 at
 * timeout (the child is then killed). *elapsed_us from proc_start, if given. */
int proc_wait(struct proc *p, int timeout_ms, int64_t *elapsed_us);
/* Runs to completion. */
int run(const struct run_opts *o, const char *const *argv, struct proc *p, int timeout_ms);

const char *build_path(const char *rel);   /* inside the build dir */
const char *shim_path(void);

/* PostgreSQL as seen by the test itself (not preloaded). */
int pg_backends(const char *app);
int pg_wait_backends_gone(const char *app, int timeout_ms);
long pg_scalar(const char *sql);
/* Lines of the server log for APP that contain NEEDLE. */
int pg_log_count(const char *app, const char *needle);
/* Abrupt-disconnect lines for APP: unexpected EOF, connection reset, lost. */
int pg_log_abrupt(const char *app);
/* The whole log, for messages. */
void pg_log_dump_app(const char *app);

/* Redis GET; returns malloc'd value or NULL. */
char *redis_get(const char *key);
pid_t redis_pid(void);
/* After a test killed it. */
void redis_restart(void);

/* Runs /usr/bin/python3 -c CODE ARGS...; returns its stdout (malloc'd) or NULL. */
char *python(const char *code, const char *const *args);
char *slurp(const char *path);
/* Occurrences of NEEDLE in the file at PATH (0 when unreadable). */
int file_count(const char *path, const char *needle);

/* Extra milliseconds allowed in timing assertions: 0, except under
 * ThreadSanitizer, whose instrumentation and exit processing are slow
 * (LASTCALL_TEST_TIME_SLACK_MS). The normal and ASan builds assert the real bounds. */
int slack_ms(void);

/* A throwaway MariaDB (tests/harness/mariadb.sh) for the MySQL tests and
 * benchmarks: exports its LC_TEST_MY_* settings. Returns 0, or -1 when none
 * could be started (no mariadbd installed). */
int mariadb_start(void);
void mariadb_stop(void);

/* PgBouncer (tests/harness/pgbouncer.sh) in front of the test's PostgreSQL:
 * exports its LC_TEST_PGB_* settings. Returns 0, or -1 when it did not start. */
int pgbouncer_start(void);
void pgbouncer_stop(void);
/* Lines of PgBouncer's log that say a client left abruptly or a server
 * connection broke. */
int pgbouncer_log_bad(void);

/* The wait status says the process died by SIG. */
int died_by(int status, int sig);
/* PID's state letter in /proc/PID/stat (R, S, D, T, Z...), 0 when it is gone. */
char proc_state(pid_t pid);
/* Dead: a zombie not yet reaped, or gone. Does not reap it. */
int proc_exited(pid_t pid);
/* Waits until PID sleeps in a blocking call (state S in /proc/PID/stat): a
 * program that printed "ready" before pause() may still be in libc's stdio,
 * where a handler's exit() rightly skips the drain. 0, or -1 at TIMEOUT_MS. */
int proc_wait_sleeping(pid_t pid, int timeout_ms);
/* Waits until APP has a query running (state 'active'); 0, or -1 at timeout. */
int wait_active_query(const char *app, int timeout_ms);
/* LLEN of KEY over the test's unix socket, or -1. */
long redis_llen(const char *key);
/* Skips the calling test unless this process may make a PID namespace
 * (unshare --pid --fork --mount-proc: root, with CAP_SYS_ADMIN). */
void skip_unless_pid_namespace(void);
/* The PID 1 of the namespace `unshare --pid --fork` (pid UNSHARE_PID) made, or -1. */
pid_t pid1_of(pid_t unshare_pid);

int64_t now_us(void);
void sleep_ms(int ms);

#endif
