/* libFuzzer target for the configuration parser: the input is split at
 * newlines into values for the LASTCALL_* variables, in a fixed order. Any
 * value must give either the parsed setting or one complaint and the default;
 * never a crash, never an out-of-range setting. */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"

static const char *names[] = {
    "LASTCALL_DEADLINE",       "LASTCALL_GRACE",        "LASTCALL_LOG",
    "LASTCALL_DISABLE",        "LASTCALL_SIGNALS",      "LASTCALL_REPORT",
    "LASTCALL_REPORT_FORMAT",  "LASTCALL_STACKS",       "LASTCALL_STACK_DEPTH",
    "LASTCALL_LEAK_THRESHOLD", "LASTCALL_LEAK_AGE",     "LASTCALL_STATUS_SIGNAL",
    "LASTCALL_LOG_FORMAT",     "LASTCALL_LOG_FILE",     "LASTCALL_STOP_DELAY",
};
#define N_NAMES (sizeof names / sizeof names[0])

static char *values[N_NAMES];
static int complaints;

static const char *fake_getenv(const char *name)
{
    for (size_t i = 0; i < N_NAMES; i++)
        if (strcmp(names[i], name) == 0)
            return values[i];
    return NULL;
}

static void count_complaint(const char *line)
{
    if (line == NULL || strchr(line, '\n'))
        abort(); /* one line each, no embedded newline */
    complaints++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    memset(values, 0, sizeof values);
    size_t given = 0;
    char *p = buf;
    for (size_t i = 0; i < N_NAMES && p; i++) {
        char *nl = strchr(p, '\n');
        if (nl)
            *nl = '\0';
        values[i] = p;
        given++;
        p = nl ? nl + 1 : NULL;
    }
    complaints = 0;
    struct lc_config cfg;
    config_load(&cfg, fake_getenv, count_complaint);
    if (complaints > (int)given)
        abort();
    if (cfg.deadline_ms <= 0 || cfg.deadline_ms > LC_MAX_DURATION_MS)
        abort();
    if (cfg.grace_ms < 0 || cfg.grace_ms > LC_MAX_DURATION_MS)
        abort();
    if (cfg.log_level < LC_LOG_OFF || cfg.log_level > LC_LOG_DEBUG)
        abort();
    if (cfg.stack_depth < 1 || cfg.stack_depth > LC_MAX_STACK_DEPTH)
        abort();
    if (cfg.leak_threshold < 0 || cfg.leak_age_ms < 0)
        abort();
    if (cfg.status_signal != 0 && sigismember(&cfg.signals, cfg.status_signal) == 1)
        abort();
    if (sigismember(&cfg.signals, SIGKILL) == 1 || sigismember(&cfg.signals, SIGSEGV) == 1)
        abort();
    free(buf);
    return 0;
}
