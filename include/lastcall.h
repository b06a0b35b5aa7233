/* lastcall public API.
 *
 * Programs never need this header: lastcall works on unmodified binaries through
 * LD_PRELOAD. It exists for tests, tools and programs that want to look inside.
 * Look the functions up with dlsym(RTLD_DEFAULT, ...) so the program still runs
 * when lastcall is not preloaded.
 */
#ifndef LASTCALL_H
#define LASTCALL_H

#ifdef __cplusplus
extern "C" {
#endif

#define LASTCALL_VERSION "0.1.0"

/* Counters since the process started (a fork child starts from zero). */
struct lastcall_stats {
    unsigned long pq_opened;      /* PostgreSQL handles returned by a connect call */
    unsigned long pq_failed;      /* ... of which the connect failed */
    unsigned long pq_closed;      /* freed by the program (PQfinish) */
    unsigned long pq_live;        /* tracked now, owned by this process */
    unsigned long redis_opened;
    unsigned long redis_failed;
    unsigned long redis_closed;   /* freed by the program (redisFree and friends) */
    unsigned long redis_live;
    unsigned long drained;        /* handles closed by lastcall's drain */
    /* Since 0.2: MySQL/MariaDB (libmariadb, libmysqlclient) handles, from
     * mysql_init or a connect call to mysql_close. */
    unsigned long mysql_opened;
    unsigned long mysql_failed;   /* ... never connected, or the last connect failed */
    unsigned long mysql_closed;   /* freed by the program (mysql_close) */
    unsigned long mysql_live;
};

/* Fills the first SIZE bytes of *out (pass sizeof *out; a caller built
 * against an older header gets the fields it knows); returns 0, or -1 when
 * SIZE is smaller than the first version of the struct. */
int lastcall_get_stats(struct lastcall_stats *out, unsigned long size);

/* The counters of one kind of connection, any kind lastcall knows, named as
 * in its JSON logs and reports: "postgresql", "redis", "mysql". */
struct lastcall_kind_stats {
    unsigned long opened;         /* handles returned by a connect call */
    unsigned long failed;         /* ... of which the connect failed */
    unsigned long closed;         /* freed by the program */
    unsigned long live;           /* tracked now, owned by this process */
};

/* Fills the first SIZE bytes of *out with KIND's counters; returns 0, or -1
 * for a kind lastcall does not know or a SIZE too small. */
int lastcall_get_kind_stats(const char *kind, struct lastcall_kind_stats *out,
                            unsigned long size);

/* "0.1.0" */
const char *lastcall_version(void);

#ifdef __cplusplus
}
#endif
#endif
