/* Configuration from LASTCALL_* environment variables.
 * Parsing is pure (no globals) so the unit tests and the fuzzer can drive it. */
#ifndef LC_CONFIG_H
#define LC_CONFIG_H

#include <signal.h>
#include <stdint.h>

enum lc_log_level { LC_LOG_OFF = 0, LC_LOG_WARN = 1, LC_LOG_INFO = 2, LC_LOG_DEBUG = 3 };

#define LC_DEFAULT_DEADLINE_MS 5000
#define LC_DEFAULT_GRACE_MS 3000
#define LC_MAX_DURATION_MS (24LL * 3600 * 1000)

enum lc_format { LC_FORMAT_TEXT = 0, LC_FORMAT_JSON = 1 };

#define LC_DEFAULT_STACK_DEPTH 16
#define LC_MAX_STACK_DEPTH 64

struct lc_config {
    int64_t deadline_ms;      /* LASTCALL_DEADLINE */
    int64_t grace_ms;         /* LASTCALL_GRACE */
    int log_level;            /* LASTCALL_LOG */
    int disabled;             /* LASTCALL_DISABLE */
    sigset_t signals;         /* LASTCALL_SIGNALS */
    const char *report_path;  /* LASTCALL_REPORT, NULL: no report */
    int report_format;        /* LASTCALL_REPORT_FORMAT */
    int stacks;               /* LASTCALL_STACKS; default: on when a report or a leak check is asked for */
    int stack_depth;          /* LASTCALL_STACK_DEPTH */
    long leak_threshold;      /* LASTCALL_LEAK_THRESHOLD, 0: off */
    int64_t leak_age_ms;      /* LASTCALL_LEAK_AGE, 0: off */
    int status_signal;        /* LASTCALL_STATUS_SIGNAL, 0: off */
    int log_format;           /* LASTCALL_LOG_FORMAT */
    const char *log_file;     /* LASTCALL_LOG_FILE, NULL: stderr */
    int64_t stop_delay_ms;    /* LASTCALL_STOP_DELAY, 0: off */
};

/* Looks a variable up; returns NULL when unset. */
typedef const char *(*lc_getenv_fn)(const char *name);
/* Receives one complaint line (without the "lastcall[pid]: " prefix). */
typedef void (*lc_complain_fn)(const char *line);

void config_defaults(struct lc_config *cfg);
/* Reads every variable; each bad value is reported once through complain and
 * replaced by its default. Never fails. */
void config_load(struct lc_config *cfg, lc_getenv_fn get, lc_complain_fn complain);

/* "500ms", "5s", "1.5s", "2m", "250us" (rounded up to 1 ms), bare "3" = seconds.
 * Returns 0 and sets *ms, or -1. Accepts 0 up to LC_MAX_DURATION_MS. */
int config_parse_duration(const char *text, int64_t *ms);
/* "TERM,INT", "SIGTERM", "15", "none"... Returns 0 or -1. */
int config_parse_signals(const char *text, sigset_t *set);
/* off|warn|info|debug. Returns the level or -1. */
int config_parse_log_level(const char *text);
/* 1/true/yes/on, 0/false/no/off/empty. Returns 0/1 or -1. */
int config_parse_bool(const char *text);
/* text|json. Returns the format or -1. */
int config_parse_format(const char *text);
/* A decimal count from 1 to 1000000. Returns 0 or -1. */
int config_parse_count(const char *text, long *out);

/* The signal number for "TERM", "SIGTERM", "15"; 0 when unknown. */
int config_signal_number(const char *name);
/* "TERM" for 15; NULL when unknown. */
const char *config_signal_name(int sig);

#endif
