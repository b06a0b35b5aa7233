#define _GNU_SOURCE
#include "harness.h"

#include <criterion/criterion.h>
#include <criterion/options.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

extern char **environ;

int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int slack_ms(void)
{
    const char *s = getenv("LASTCALL_TEST_TIME_SLACK_MS");
    return s ? atoi(s) : 0;
}

void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

const char *build_path(const char *rel)
{
    static __thread char buf[8][1024];
    static __thread int i;
    const char *root = getenv("LASTCALL_BUILD_ROOT");
    char *out = buf[i++ % 8];
    /* LASTCALL_TEST_SHIM_DIR: a prebuilt liblastcall.so and lastcall launcher
     * under test instead of this build's (tests/platforms/debian-suite runs the
     * suite with the glibc-floor build). */
    const char *shim_dir = getenv("LASTCALL_TEST_SHIM_DIR");
    if (shim_dir && *shim_dir && strncmp(rel, "shim/", 5) == 0) {
        snprintf(out, 1024, "%s/%s", shim_dir, rel + 5);
        return out;
    }
    snprintf(out, 1024, "%s/%s", root ? root : ".", rel);
    return out;
}

const char *shim_path(void)
{
    return build_path("shim/liblastcall.so");
}

static char server_dir[512];

/* Runs SCRIPT (under tests/harness) with "start DIR" and exports the
 * KEY=VALUE lines it prints. Returns 0, or -1 when it printed none or failed. */
static int start_from_script(const char *script, const char *dir)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s/tests/harness/%s start %s", getenv("LASTCALL_SOURCE_ROOT"),
             script, dir);
    FILE *f = popen(cmd, "r");
    char line[1024];
    int n = 0;
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char *eq = strchr(line, '=');
        if (!eq)
            continue;
        *eq = '\0';
        setenv(line, eq + 1, 1);
        n++;
    }
    return f == NULL || pclose(f) != 0 || n == 0 ? -1 : 0;
}

static void start_servers(void)
{
    if (getenv("LASTCALL_SOURCE_ROOT") == NULL) {
        fprintf(stderr, "harness: LASTCALL_SOURCE_ROOT unset (run through meson test)\n");
        exit(2);
    }
    snprintf(server_dir, sizeof server_dir, "/tmp/lastcall-test.XXXXXX");
    if (mkdtemp(server_dir) == NULL) {
        perror("mkdtemp");
        exit(2);
    }
    if (start_from_script("servers.sh", server_dir) != 0) {
        fprintf(stderr, "harness: servers did not start\n");
        exit(2);
    }
}

void redis_restart(void)
{
    char cmd[2048];
    /* Tests run in re-executed workers: the directory comes from the environment. */
    snprintf(cmd, sizeof cmd, "%s/tests/harness/servers.sh restart-redis %s",
             getenv("LASTCALL_SOURCE_ROOT"), getenv("LC_TEST_DIR"));
    cr_assert_eq(system(cmd), 0, "redis-server did not restart");
}

static void stop_servers(void)
{
    const char *src = getenv("LASTCALL_SOURCE_ROOT");
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s/tests/harness/servers.sh stop %s", src, server_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "harness: stopping servers failed\n");
}

int harness_main(int argc, char **argv)
{
    struct criterion_test_set *tests = criterion_initialize();
    int result = 0;
    criterion_options.jobs = 1; /* tests stop and kill servers: one at a time */
    if (criterion_handle_args(argc, argv, true)) {
        start_servers();
        result = !criterion_run_all_tests(tests);
        stop_servers();
    }
    criterion_finalize(tests);
    return result;
}

/* ---- processes ---- */

void proc_start(struct proc *p, const struct run_opts *o, const char *const *argv)
{
    memset(p, 0, sizeof *p);
    int out[2], err[2], in[2] = {-1, -1};
    if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC) || (o->keep_stdin && pipe2(in, O_CLOEXEC)))
        cr_assert_fail("pipe");
    p->started_us = now_us();
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(out[1], 1);
        dup2(err[1], 2);
        if (o->keep_stdin)
            dup2(in[0], 0);
        else {
            int devnull = open("/dev/null", O_RDONLY);
            dup2(devnull, 0);
        }
        /* A fresh signal state, as a service manager would give. */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        unsetenv("LD_PRELOAD");
        if (o->preload) {
            const char *first = getenv("LASTCALL_TEST_PRELOAD_FIRST");
            char preload[2048];
            snprintf(preload, sizeof preload, "%s%s%s", first ? first : "", first ? ":" : "",
                     shim_path());
            setenv("LD_PRELOAD", preload, 1);
        }
        if (o->app)
            setenv("PGAPPNAME", o->app, 1);
        for (int i = 0; o->env && o->env[i]; i++)
            putenv((char *)o->env[i]);
        execvp(argv[0], (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(out[1]);
    close(err[1]);
    p->pid = pid;
    p->out_fd = out[0];
    p->err_fd = err[0];
    p->in_fd = -1;
    if (o->keep_stdin) {
        close(in[0]);
        p->in_fd = in[1];
    }
}

static void drain_fd(int *fd, char *buf, size_t *len, size_t cap)
{
    if (*fd < 0)
        return;
    for (;;) {
        if (*len + 1 >= cap) {
            char tmp[4096];
            ssize_t r = read(*fd, tmp, sizeof tmp);
            if (r > 0)
                continue;
            if (r == 0) {
                close(*fd);
                *fd = -1;
            }
            return;
        }
        ssize_t r = read(*fd, buf + *len, cap - 1 - *len);
        if (r > 0) {
            *len += (size_t)r;
            buf[*len] = '\0';
            continue;
        }
        if (r == 0) {
            close(*fd);
            *fd = -1;
        }
        return;
    }
}

static void pump(struct proc *p, int timeout_ms)
{
    struct pollfd fds[2] = {{.fd = p->out_fd, .events = POLLIN}, {.fd = p->err_fd, .events = POLLIN}};
    if (poll(fds, 2, timeout_ms) <= 0)
        return;
    fcntl(p->out_fd, F_SETFL, O_NONBLOCK);
    fcntl(p->err_fd, F_SETFL, O_NONBLOCK);
    if (fds[0].revents)
        drain_fd(&p->out_fd, p->out, &p->out_len, sizeof p->out);
    if (fds[1].revents)
        drain_fd(&p->err_fd, p->err, &p->err_len, sizeof p->err);
}

int proc_wait_for(struct proc *p, const char *needle, int timeout_ms)
{
    int64_t until = now_us() + (int64_t)timeout_ms * 1000;
    while (now_us() < until) {
        if (strstr(p->out, needle))
            return 0;
        if (p->out_fd < 0)
            return -1;
        pump(p, 20);
    }
    return strstr(p->out, needle) ? 0 : -1;
}

int proc_wait_for_err(struct proc *p, const char *needle, int timeout_ms)
{
    int64_t until = now_us() + (int64_t)timeout_ms * 1000;
    while (now_us() < until) {
        if (strstr(p->err, needle))
            return 0;
        if (p->err_fd < 0)
            return -1;
        pump(p, 20);
    }
    return strstr(p->err, needle) ? 0 : -1;
}

char *python(const char *code, const char *const *args)
{
    const char *argv[16] = {"/usr/bin/python3", "-c", code};
    int a = 3;
    for (int i = 0; args && args[i] && a < 15; i++)
        argv[a++] = args[i];
    argv[a] = NULL;
    struct proc *p = calloc(1, sizeof *p);
    struct run_opts o = {0};
    int s = run(&o, argv, p, 30000);
    char *out = NULL;
    if (WIFEXITED(s) && WEXITSTATUS(s) == 0)
        out = strdup(p->out);
    else
        fprintf(stderr, "python failed: %s\n", p->err);
    free(p);
    return out;
}

char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    char *buf = calloc(1, 1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

int proc_wait(struct proc *p, int timeout_ms, int64_t *elapsed_us)
{
    int64_t until = now_us() + (int64_t)timeout_ms * 1000;
    int status = -1;
    for (;;) {
        pid_t r = waitpid(p->pid, &status, WNOHANG);
        if (r == p->pid) {
            if (elapsed_us)
                *elapsed_us = now_us() - p->started_us;
            break;
        }
        if (now_us() >= until) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &status, 0);
            status = -1;
            break;
        }
        if (p->out_fd >= 0 || p->err_fd >= 0)
            pump(p, 5);
        else
            sleep_ms(2);
    }
    /* Collect whatever is left. */
    for (int i = 0; i < 50 && (p->out_fd >= 0 || p->err_fd >= 0); i++)
        pump(p, 20);
    if (p->in_fd >= 0) {
        close(p->in_fd);
        p->in_fd = -1;
    }
    return status;
}

int run(const struct run_opts *o, const char *const *argv, struct proc *p, int timeout_ms)
{
    proc_start(p, o, argv);
    return proc_wait(p, timeout_ms, NULL);
}

/* ---- PostgreSQL, seen from the test ---- */

static PGconn *admin(void)
{
    PGconn *c = PQconnectdb("application_name=lastcall_test_admin");
    cr_assert_eq(PQstatus(c), CONNECTION_OK, "admin connect: %s", PQerrorMessage(c));
    return c;
}

long pg_scalar(const char *sql)
{
    PGconn *c = admin();
    PGresult *r = PQexec(c, sql);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(c));
    long v = atol(PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(c);
    return v;
}

int pg_backends(const char *app)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s'", app);
    return (int)pg_scalar(sql);
}

int pg_wait_backends_gone(const char *app, int timeout_ms)
{
    int64_t until = now_us() + (int64_t)timeout_ms * 1000;
    int n;
    while ((n = pg_backends(app)) > 0 && now_us() < until)
        sleep_ms(20);
    /* The disconnect lines are written as the backend exits. */
    sleep_ms(100);
    return n;
}

int pg_log_count(const char *app, const char *needle)
{
    FILE *f = fopen(getenv("LC_TEST_PG_LOG"), "r");
    cr_assert_not_null(f, "server log");
    char tag[256];
    snprintf(tag, sizeof tag, "app=%s ", app);
    char line[8192];
    int n = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, tag) && strstr(line, needle))
            n++;
    fclose(f);
    return n;
}

int pg_log_abrupt(const char *app)
{
    return pg_log_count(app, "unexpected EOF") + pg_log_count(app, "could not receive data") +
           pg_log_count(app, "connection to client lost") +
           pg_log_count(app, "could not send data");
}

void pg_log_dump_app(const char *app)
{
    FILE *f = fopen(getenv("LC_TEST_PG_LOG"), "r");
    if (!f)
        return;
    char tag[256];
    snprintf(tag, sizeof tag, "app=%s ", app);
    char line[8192];
    while (fgets(line, sizeof line, f))
        if (strstr(line, tag))
            fprintf(stderr, "  pg.log: %s", line);
    fclose(f);
}

/* ---- Redis, seen from the test ---- */

char *redis_get(const char *key)
{
    redisContext *c = redisConnectUnix(getenv("LC_TEST_REDIS_SOCK"));
    cr_assert(c && !c->err, "redis connect");
    redisReply *r = redisCommand(c, "GET %s", key);
    char *v = NULL;
    if (r && r->type == REDIS_REPLY_STRING)
        v = strdup(r->str);
    freeReplyObject(r);
    redisFree(c);
    return v;
}

pid_t redis_pid(void)
{
    FILE *f = fopen(getenv("LC_TEST_REDIS_PIDFILE"), "r");
    cr_assert_not_null(f);
    int pid = 0;
    if (fscanf(f, "%d", &pid) != 1)
        pid = 0;
    fclose(f);
    return pid;
}

/* ---- shared by several test files ---- */

int died_by(int status, int sig)
{
    return status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == sig;
}

char proc_state(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    char *stat = slurp(path);
    const char *paren = stat ? strrchr(stat, ')') : NULL;
    char state = paren && paren[1] == ' ' ? paren[2] : 0;
    free(stat);
    return state;
}

int proc_exited(pid_t pid)
{
    char state = proc_state(pid);
    return state == 0 || state == 'Z';
}

int proc_wait_sleeping(pid_t pid, int timeout_ms)
{
    int64_t until = now_us() + (int64_t)timeout_ms * 1000;
    while (now_us() < until) {
        if (proc_state(pid) == 'S')
            return 0;
        sleep_ms(1);
    }
    return -1;
}

int wait_active_query(const char *app, int timeout_ms)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' "
             "AND state = 'active'", app);
    int64_t until = now_us() + (int64_t)timeout_ms * 1000;
    while (now_us() < until) {
        if (pg_scalar(sql) > 0)
            return 0;
        sleep_ms(20);
    }
    return -1;
}

long redis_llen(const char *key)
{
    redisContext *c = redisConnectUnix(getenv("LC_TEST_REDIS_SOCK"));
    cr_assert(c && !c->err, "redis connect");
    redisReply *r = redisCommand(c, "LLEN %s", key);
    long n = r && r->type == REDIS_REPLY_INTEGER ? (long)r->integer : -1;
    freeReplyObject(r);
    redisFree(c);
    return n;
}

pid_t pid1_of(pid_t unshare_pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)unshare_pid, (int)unshare_pid);
    FILE *f = fopen(path, "r");
    int child = -1;
    if (f == NULL || fscanf(f, "%d", &child) != 1)
        child = -1;
    if (f)
        fclose(f);
    return child;
}

static char mariadb_dir[512];

int mariadb_start(void)
{
    if (getenv("LASTCALL_SOURCE_ROOT") == NULL)
        return -1;
    snprintf(mariadb_dir, sizeof mariadb_dir, "/tmp/lastcall-mysql.XXXXXX");
    if (mkdtemp(mariadb_dir) == NULL)
        return -1;
    if (start_from_script("mariadb.sh", mariadb_dir) != 0) {
        rmdir(mariadb_dir);
        mariadb_dir[0] = '\0';
        return -1;
    }
    return 0;
}

void mariadb_stop(void)
{
    if (mariadb_dir[0] == '\0')
        return;
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s/tests/harness/mariadb.sh stop %s",
             getenv("LASTCALL_SOURCE_ROOT"), mariadb_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "harness: stopping mariadbd failed\n");
    mariadb_dir[0] = '\0';
}

int file_count(const char *path, const char *needle)
{
    char *text = slurp(path);
    int n = 0;
    for (char *p = text; p && (p = strstr(p, needle)) != NULL; p++)
        n++;
    free(text);
    return n;
}

/* PgBouncer in front of the test's PostgreSQL, in the servers' temp dir. */
int pgbouncer_start(void)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/pgbouncer", getenv("LC_TEST_DIR"));
    return start_from_script("pgbouncer.sh", dir);
}

int pgbouncer_log_bad(void)
{
    const char *log = getenv("LC_TEST_PGB_LOG");
    return file_count(log, "client unexpected eof") + file_count(log, "was not ready") +
           file_count(log, "FATAL");
}

void pgbouncer_stop(void)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s/tests/harness/pgbouncer.sh stop %s/pgbouncer",
             getenv("LASTCALL_SOURCE_ROOT"), getenv("LC_TEST_DIR"));
    if (system(cmd) != 0)
        fprintf(stderr, "harness: stopping pgbouncer failed\n");
}

void skip_unless_pid_namespace(void)
{
    if (geteuid() != 0)
        cr_skip_test("needs root: unshare --pid --fork --mount-proc makes the PID namespace");
    /* Root inside an unprivileged container may still lack CAP_SYS_ADMIN. */
    const char *probe[] = {"unshare", "--pid", "--fork", "--mount-proc", "true", NULL};
    struct run_opts o = {0};
    struct proc p;
    int s = run(&o, probe, &p, 10000);
    if (!WIFEXITED(s) || WEXITSTATUS(s) != 0)
        cr_skip_test("unshare --pid --fork --mount-proc is not permitted here: %s", p.err);
}
