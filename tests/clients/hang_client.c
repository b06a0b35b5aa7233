/* Programs that hung, or ended later or worse, under lastcall (issue 19),
 * each a mode; run with and without the shim by tests/integration/test_hangs.c.
 *
 *   hang_client stall-signal|stall-exit   a transaction open, then every later
 *       allocation blocks forever (stall_alloc.so, preloaded by the test): a
 *       drain that allocates is stuck; SIGTERM, or exit(7)
 *   hang_client plugin-sleep PLUGIN       a transaction open, then dlopen of a
 *       plugin whose constructor sleeps (ld.so's load lock held): SIGTERM then
 *   hang_client plugin-sleep-threaded PLUGIN   the same, while another thread
 *       runs queries whose notice processor calls dlsym
 *   hang_client exit-in-malloc            exit(3) from a SIGALRM handler that
 *       interrupts malloc/free at a random moment
 *   hang_client abandon                   exit(4) from a SIGALRM handler that
 *       interrupts PQexec(pg_sleep) on the same thread
 *   hang_client frozen-tx                 one thread idle in a transaction
 *       holding a row lock, two threads' UPDATEs waiting for it: SIGTERM
 *   hang_client fork-storm                a connection open, then fork() and
 *       waitpid() of a child that _exits, over and over: SIGTERM then
 *   hang_client search SEED THREADS EXIT_MS PLUGIN   the hang search: THREADS
 *       extra threads and the main one each loop over a random mix (seeded)
 *       of queries raising NOTICEs whose processor allocates and calls dlsym,
 *       dlopen/dlclose of PLUGIN (its constructor sleeps HANG_CTOR_US), dlsym,
 *       fork, and malloc/free; EXIT_MS > 0: a SIGALRM handler calls exit(9)
 *       that long after "ready" (else the test sends a signal)
 *
 * Connects with PQconnectdb("") (PGHOST, PGPORT... from the harness). Prints
 * "ready" when the test may act. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static PGconn *connect_or_die(void)
{
    PGconn *c = PQconnectdb("");
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "hang_client: connect: %s", PQerrorMessage(c));
        exit(2);
    }
    return c;
}

static void exec_or_die(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "hang_client: %s: %s", sql, PQerrorMessage(c));
        exit(2);
    }
    PQclear(r);
}

static void ready(void)
{
    printf("ready\n");
    fflush(stdout);
}

static void stall(int then_exit)
{
    PGconn *c = connect_or_die();
    exec_or_die(c, "BEGIN");
    exec_or_die(c, "SELECT 1");
    void (*stall_all)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "stall_alloc_begin");
    if (stall_all == NULL) {
        fprintf(stderr, "hang_client: stall_alloc.so is not preloaded\n");
        exit(2);
    }
    stall_all();
    /* write(), not stdio: stdio may allocate. */
    static const char msg[] = "ready\n";
    (void)!write(1, msg, sizeof msg - 1);
    if (then_exit)
        exit(7);
    for (;;)
        pause();
}

static void looking_up_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
    (void)!dlsym(RTLD_DEFAULT, "getpid"); /* waits while ld.so's load lock is held */
}

static void *notices_with_lookups(void *arg)
{
    PGconn *c = arg;
    PQsetNoticeProcessor(c, looking_up_notice, NULL);
    for (;;)
        PQclear(PQexec(c, "DO $$ BEGIN FOR i IN 1..5 LOOP RAISE NOTICE 'n %', i; "
                          "PERFORM pg_sleep(0.001); END LOOP; END $$"));
    return NULL;
}

static void plugin_sleep(const char *plugin, int threaded)
{
    if (threaded) {
        pthread_t t;
        pthread_create(&t, NULL, notices_with_lookups, connect_or_die());
    }
    PGconn *c = connect_or_die();
    exec_or_die(c, "BEGIN");
    exec_or_die(c, "SELECT 1");
    ready();
    void *h = dlopen(plugin, RTLD_NOW);
    printf("loaded %s\n", h ? "ok" : dlerror());
    fflush(stdout);
    PQfinish(c);
    exit(0);
}

static void exit_3(int sig)
{
    (void)sig;
    exit(3);
}

static void exit_in_malloc(void)
{
    PGconn *c = connect_or_die();
    exec_or_die(c, "SELECT 1");
    signal(SIGALRM, exit_3);
    srand((unsigned)getpid() ^ (unsigned)time(NULL));
    ready();
    struct itimerval it = {{0, 0}, {0, 1000 + rand() % 20000}};
    setitimer(ITIMER_REAL, &it, NULL);
    void *keep[64] = {0};
    for (unsigned i = 0;; i++) {
        size_t k = i % 64;
        free(keep[k]);
        keep[k] = malloc(16 + (i * 7919) % 4000);
    }
}

static void exit_4(int sig)
{
    (void)sig;
    exit(4);
}

static void abandon(void)
{
    PGconn *c = connect_or_die();
    signal(SIGALRM, exit_4);
    ready();
    alarm(1);
    PQclear(PQexec(c, "SELECT pg_sleep(30)"));
    fprintf(stderr, "hang_client: the query returned\n");
    exit(2);
}

static void fork_storm(void)
{
    PGconn *c = connect_or_die();
    exec_or_die(c, "SELECT 1");
    ready();
    for (;;) {
        pid_t pid = fork();
        if (pid == 0)
            _exit(0);
        if (pid > 0)
            waitpid(pid, NULL, 0);
    }
}

static void *locker(void *arg)
{
    (void)arg;
    PGconn *c = connect_or_die();
    exec_or_die(c, "BEGIN");
    exec_or_die(c, "UPDATE hang_rows SET v = v + 1 WHERE id = 1");
    printf("locked\n");
    fflush(stdout);
    for (;;)
        pause(); /* idle in the transaction, in the program's own code */
    return NULL;
}

static void *waiter(void *arg)
{
    PGconn *c = arg;
    exec_or_die(c, "BEGIN");
    PGresult *r = PQexec(c, "UPDATE hang_rows SET v = v + 1 WHERE id = 1");
    printf("waiter: %s\n", PQresStatus(PQresultStatus(r)));
    fflush(stdout);
    PQclear(r);
    exec_or_die(c, "COMMIT");
    return NULL;
}

static void frozen_tx(void)
{
    PGconn *setup = connect_or_die();
    exec_or_die(setup, "CREATE TABLE IF NOT EXISTS hang_rows (id int PRIMARY KEY, v int)");
    exec_or_die(setup, "INSERT INTO hang_rows VALUES (1, 0) ON CONFLICT DO NOTHING");
    PGconn *w[2] = {connect_or_die(), connect_or_die()};
    pthread_t t;
    pthread_create(&t, NULL, locker, NULL);
    struct timespec ts = {0, 200 * 1000000};
    nanosleep(&ts, NULL);
    for (int i = 0; i < 2; i++)
        pthread_create(&t, NULL, waiter, w[i]);
    /* Both UPDATEs are waiting for the row lock once the test sees them in
     * pg_stat_activity; it sends SIGTERM then. */
    ready();
    for (;;)
        pause();
}

static void busy_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
    void *p = malloc(64 + (size_t)(rand() % 4096));
    (void)!dlsym(RTLD_DEFAULT, "getpid");
    free(p);
}

struct searcher {
    unsigned seed;
    const char *plugin;
    int main;                 /* the main thread's: how many threads connect in all */
    void (*on_ready)(void);
};

static int searchers_connected;

static void *search_loop(void *arg)
{
    struct searcher *s = arg;
    PGconn *c = connect_or_die();
    PQsetNoticeProcessor(c, busy_notice, NULL);
    __atomic_add_fetch(&searchers_connected, 1, __ATOMIC_RELEASE);
    if (s->main) {
        /* "ready" once every thread is connected: a signal before any
         * connection exists has nothing to drain. */
        while (__atomic_load_n(&searchers_connected, __ATOMIC_ACQUIRE) < s->main)
            sched_yield();
        s->on_ready();
    }
    unsigned seed = s->seed;
    for (;;) {
        switch (rand_r(&seed) % 6) {
        case 0:
            PQclear(PQexec(c, "DO $$ BEGIN FOR i IN 1..3 LOOP RAISE NOTICE 'n %', i; "
                              "PERFORM pg_sleep(0.002); END LOOP; END $$"));
            break;
        case 1: {
            void *h = dlopen(s->plugin, RTLD_NOW | RTLD_LOCAL);
            if (h)
                dlclose(h);
            break;
        }
        case 2:
            (void)!dlsym(RTLD_DEFAULT, rand_r(&seed) % 2 ? "PQexec" : "strlen");
            break;
        case 3: {
            pid_t pid = fork();
            if (pid == 0)
                _exit(0); /* a child never touches the parent's connections */
            if (pid > 0)
                waitpid(pid, NULL, 0);
            break;
        }
        case 4: {
            void *keep[32];
            for (int i = 0; i < 32; i++)
                keep[i] = malloc(16 + (size_t)(rand_r(&seed) % 8000));
            for (int i = 0; i < 32; i++)
                free(keep[i]);
            break;
        }
        default:
            PQclear(PQexec(c, "BEGIN; SELECT 1"));
            PQclear(PQexec(c, "COMMIT"));
            break;
        }
    }
    return NULL;
}

static void exit_9(int sig)
{
    (void)sig;
    exit(9);
}

static long search_exit_ms;

static void search_ready(void)
{
    if (search_exit_ms > 0) {
        signal(SIGALRM, exit_9);
        struct itimerval it = {{0, 0}, {search_exit_ms / 1000, (search_exit_ms % 1000) * 1000}};
        ready();
        setitimer(ITIMER_REAL, &it, NULL);
    } else {
        ready();
    }
}

static void search(unsigned seed, int threads, long exit_ms, const char *plugin)
{
    static struct searcher s[9];
    for (int i = 0; i <= threads && i < 9; i++) {
        s[i].seed = seed * 31u + (unsigned)i;
        s[i].plugin = plugin;
    }
    pthread_t t;
    for (int i = 1; i <= threads && i < 9; i++)
        pthread_create(&t, NULL, search_loop, &s[i]);
    search_exit_ms = exit_ms;
    s[0].main = (threads < 8 ? threads : 8) + 1;
    s[0].on_ready = search_ready;
    search_loop(&s[0]);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "stall-signal") == 0)
        stall(0);
    else if (strcmp(mode, "stall-exit") == 0)
        stall(1);
    else if (strcmp(mode, "plugin-sleep") == 0 && argc > 2)
        plugin_sleep(argv[2], 0);
    else if (strcmp(mode, "plugin-sleep-threaded") == 0 && argc > 2)
        plugin_sleep(argv[2], 1);
    else if (strcmp(mode, "exit-in-malloc") == 0)
        exit_in_malloc();
    else if (strcmp(mode, "abandon") == 0)
        abandon();
    else if (strcmp(mode, "frozen-tx") == 0)
        frozen_tx();
    else if (strcmp(mode, "fork-storm") == 0)
        fork_storm();
    else if (strcmp(mode, "search") == 0 && argc > 5)
        search((unsigned)strtoul(argv[2], NULL, 10), atoi(argv[3]), atol(argv[4]), argv[5]);
    fprintf(stderr, "usage: hang_client stall-signal|stall-exit|plugin-sleep PLUGIN|"
                    "exit-in-malloc|abandon|frozen-tx|fork-storm|search ...\n");
    return 2;
}
