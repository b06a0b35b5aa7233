#include "core/config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Signals a program can sensibly ask to drain on. SIGKILL/SIGSTOP cannot be
 * caught, and synchronous faults (SEGV, BUS...) must keep their meaning. */
static const struct {
    const char *name;
    int number;
} signal_names[] = {
    {"TERM", SIGTERM}, {"INT", SIGINT}, {"HUP", SIGHUP}, {"QUIT", SIGQUIT},
    {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"PIPE", SIGPIPE}, {"ALRM", SIGALRM},
    {"XCPU", SIGXCPU}, {"XFSZ", SIGXFSZ}, {"VTALRM", SIGVTALRM}, {"PWR", SIGPWR},
};

void config_defaults(struct lc_config *cfg)
{
    /* Field by field through a volatile pointer: merged into vector stores,
     * the constants would be loaded from read-only data, which every process
     * would then fault in (runtime.c's environment scan says why that
     * matters). */
    volatile struct lc_config *v = cfg;
    v->deadline_ms = LC_DEFAULT_DEADLINE_MS;
    v->grace_ms = LC_DEFAULT_GRACE_MS;
    v->log_level = LC_LOG_WARN;
    v->disabled = 0;
    sigemptyset(&cfg->signals);
    sigaddset(&cfg->signals, SIGTERM);
    sigaddset(&cfg->signals, SIGINT);
    v->report_path = NULL;
    v->report_format = LC_FORMAT_TEXT;
    v->stacks = 0;
    v->stack_depth = LC_DEFAULT_STACK_DEPTH;
    v->leak_threshold = 0;
    v->leak_age_ms = 0;
    v->status_signal = 0;
    v->log_format = LC_FORMAT_TEXT;
    v->log_file = NULL;
    v->stop_delay_ms = 0;
}

int config_parse_format(const char *text)
{
    if (text == NULL)
        return -1;
    if (strcasecmp(text, "text") == 0)
        return LC_FORMAT_TEXT;
    if (strcasecmp(text, "json") == 0)
        return LC_FORMAT_JSON;
    return -1;
}

int config_parse_count(const char *text, long *out)
{
    if (text == NULL || !isdigit((unsigned char)*text))
        return -1;
    errno = 0;
    char *end = NULL;
    long v = strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || v < 1 || v > 1000000)
        return -1;
    *out = v;
    return 0;
}

int config_parse_duration(const char *text, int64_t *ms)
{
    if (text == NULL)
        return -1;
    while (isspace((unsigned char)*text))
        text++;
    if (!isdigit((unsigned char)*text) && *text != '.')
        return -1;
    errno = 0;
    char *end = NULL;
    double value = strtod(text, &end);
    if (errno != 0 || end == text || value != value || value < 0)
        return -1;
    while (isspace((unsigned char)*end))
        end++;
    double scale;
    if (*end == '\0' || strcasecmp(end, "s") == 0 || strcasecmp(end, "sec") == 0)
        scale = 1000.0;
    else if (strcasecmp(end, "ms") == 0)
        scale = 1.0;
    else if (strcasecmp(end, "us") == 0)
        scale = 0.001;
    else if (strcasecmp(end, "m") == 0 || strcasecmp(end, "min") == 0)
        scale = 60000.0;
    else
        return -1;
    double result = value * scale;
    if (result > (double)LC_MAX_DURATION_MS)
        return -1;
    int64_t whole = (int64_t)result;
    if ((double)whole < result)
        whole++;
    *ms = whole;
    return 0;
}

int config_signal_number(const char *name)
{
    if (name == NULL || *name == '\0')
        return 0;
    if (isdigit((unsigned char)*name)) {
        char *end = NULL;
        long n = strtol(name, &end, 10);
        if (*end != '\0')
            return 0;
        for (size_t i = 0; i < sizeof signal_names / sizeof signal_names[0]; i++)
            if (signal_names[i].number == n)
                return (int)n;
        return 0;
    }
    if (strncasecmp(name, "SIG", 3) == 0)
        name += 3;
    for (size_t i = 0; i < sizeof signal_names / sizeof signal_names[0]; i++)
        if (strcasecmp(signal_names[i].name, name) == 0)
            return signal_names[i].number;
    return 0;
}

const char *config_signal_name(int sig)
{
    for (size_t i = 0; i < sizeof signal_names / sizeof signal_names[0]; i++)
        if (signal_names[i].number == sig)
            return signal_names[i].name;
    return NULL;
}

int config_parse_signals(const char *text, sigset_t *set)
{
    if (text == NULL)
        return -1;
    sigset_t out;
    sigemptyset(&out);
    if (strcasecmp(text, "none") == 0 || *text == '\0') {
        *set = out;
        return 0;
    }
    char buf[256];
    if (strlen(text) >= sizeof buf)
        return -1;
    strcpy(buf, text);
    char *save = NULL;
    int count = 0;
    for (char *tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
        int sig = config_signal_number(tok);
        if (sig == 0)
            return -1;
        sigaddset(&out, sig);
        count++;
    }
    if (count == 0)
        return -1;
    *set = out;
    return 0;
}

int config_parse_log_level(const char *text)
{
    if (text == NULL)
        return -1;
    static const char *names[] = {"off", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (strcasecmp(text, names[i]) == 0)
            return i;
    if (strcasecmp(text, "error") == 0 || strcasecmp(text, "warning") == 0)
        return LC_LOG_WARN;
    return -1;
}

int config_parse_bool(const char *text)
{
    if (text == NULL)
        return -1;
    static const char *yes[] = {"1", "true", "yes", "on"};
    static const char *no[] = {"", "0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++)
        if (strcasecmp(text, yes[i]) == 0)
            return 1;
    for (size_t i = 0; i < 5; i++)
        if (strcasecmp(text, no[i]) == 0)
            return 0;
    return -1;
}

/* Quotes a user value for a complaint: printable ASCII only, bounded. */
static void quote_value(char *out, size_t size, const char *value)
{
    size_t o = 0;
    for (size_t i = 0; value[i] && o + 5 < size; i++) {
        unsigned char c = (unsigned char)value[i];
        if (c >= 0x20 && c < 0x7f && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, size - o, "\\x%02x", c);
        if (i == 60) {
            o += (size_t)snprintf(out + o, size - o, "...");
            break;
        }
    }
    out[o < size ? o : size - 1] = '\0';
}

static void complain_bad(lc_complain_fn complain, const char *name, const char *value,
                         const char *expected, const char *fallback)
{
    if (complain == NULL)
        return;
    char quoted[128];
    quote_value(quoted, sizeof quoted, value);
    char line[400];
    snprintf(line, sizeof line, "ignoring %s=\"%s\": expected %s; using %s", name, quoted,
             expected, fallback);
    complain(line);
}

void config_load(struct lc_config *cfg, lc_getenv_fn get, lc_complain_fn complain)
{
    config_defaults(cfg);
    const char *v;

    /* The log level first, so LASTCALL_LOG=off also silences complaints about
     * the other variables. */
    if ((v = get("LASTCALL_LOG")) != NULL) {
        int level = config_parse_log_level(v);
        if (level < 0)
            complain_bad(complain, "LASTCALL_LOG", v, "off, warn, info or debug", "warn");
        else
            cfg->log_level = level;
    }
    if (cfg->log_level == LC_LOG_OFF)
        complain = NULL;

    if ((v = get("LASTCALL_DISABLE")) != NULL) {
        int b = config_parse_bool(v);
        if (b < 0)
            complain_bad(complain, "LASTCALL_DISABLE", v, "1 or 0", "0 (enabled)");
        else
            cfg->disabled = b;
    }
    if ((v = get("LASTCALL_DEADLINE")) != NULL) {
        int64_t ms;
        if (config_parse_duration(v, &ms) < 0 || ms == 0)
            complain_bad(complain, "LASTCALL_DEADLINE", v,
                         "a duration above zero such as 500ms or 5s", "5s");
        else
            cfg->deadline_ms = ms;
    }
    if ((v = get("LASTCALL_GRACE")) != NULL) {
        int64_t ms;
        if (config_parse_duration(v, &ms) < 0)
            complain_bad(complain, "LASTCALL_GRACE", v, "a duration such as 0, 500ms or 3s",
                         "3s");
        else
            cfg->grace_ms = ms;
    }
    if ((v = get("LASTCALL_SIGNALS")) != NULL) {
        sigset_t set;
        if (config_parse_signals(v, &set) < 0)
            complain_bad(complain, "LASTCALL_SIGNALS", v,
                         "signal names such as TERM,INT (or none)", "TERM,INT");
        else
            cfg->signals = set;
    }
    if ((v = get("LASTCALL_REPORT")) != NULL) {
        if (*v == '\0')
            complain_bad(complain, "LASTCALL_REPORT", v, "a file path", "no report");
        else
            cfg->report_path = v;
    }
    if ((v = get("LASTCALL_REPORT_FORMAT")) != NULL) {
        int f = config_parse_format(v);
        if (f < 0)
            complain_bad(complain, "LASTCALL_REPORT_FORMAT", v, "text or json", "text");
        else
            cfg->report_format = f;
    }
    if ((v = get("LASTCALL_LEAK_THRESHOLD")) != NULL) {
        long n;
        if (config_parse_count(v, &n) < 0)
            complain_bad(complain, "LASTCALL_LEAK_THRESHOLD", v, "a count from 1 to 1000000",
                         "off");
        else
            cfg->leak_threshold = n;
    }
    if ((v = get("LASTCALL_LEAK_AGE")) != NULL) {
        int64_t ms;
        if (config_parse_duration(v, &ms) < 0 || ms == 0)
            complain_bad(complain, "LASTCALL_LEAK_AGE", v, "a duration above zero such as 30s",
                         "off");
        else
            cfg->leak_age_ms = ms;
    }
    /* Stacks default to on when someone will read them. */
    cfg->stacks = cfg->report_path != NULL || cfg->leak_threshold > 0 || cfg->leak_age_ms > 0;
    if ((v = get("LASTCALL_STACKS")) != NULL) {
        int b = config_parse_bool(v);
        if (b < 0)
            complain_bad(complain, "LASTCALL_STACKS", v, "on or off",
                         cfg->stacks ? "on" : "off");
        else
            cfg->stacks = b;
    }
    if ((v = get("LASTCALL_STACK_DEPTH")) != NULL) {
        long n;
        if (config_parse_count(v, &n) < 0 || n > LC_MAX_STACK_DEPTH)
            complain_bad(complain, "LASTCALL_STACK_DEPTH", v, "a frame count from 1 to 64", "16");
        else
            cfg->stack_depth = (int)n;
    }
    if ((v = get("LASTCALL_STATUS_SIGNAL")) != NULL) {
        int sig = config_signal_number(v);
        if (strcasecmp(v, "off") == 0 || strcasecmp(v, "none") == 0)
            sig = 0;
        else if (sig == 0 || sigismember(&cfg->signals, sig) == 1)
            complain_bad(complain, "LASTCALL_STATUS_SIGNAL", v,
                         "a signal name such as USR2, not one of LASTCALL_SIGNALS", "off");
        else
            cfg->status_signal = sig;
    }
    if ((v = get("LASTCALL_STOP_DELAY")) != NULL) {
        int64_t ms;
        if (config_parse_duration(v, &ms) < 0)
            complain_bad(complain, "LASTCALL_STOP_DELAY", v, "a duration such as 5s (0: off)",
                         "off");
        else
            cfg->stop_delay_ms = ms;
    }
    if ((v = get("LASTCALL_LOG_FORMAT")) != NULL) {
        int f = config_parse_format(v);
        if (f < 0)
            complain_bad(complain, "LASTCALL_LOG_FORMAT", v, "text or json", "text");
        else
            cfg->log_format = f;
    }
    if ((v = get("LASTCALL_LOG_FILE")) != NULL) {
        if (*v == '\0')
            complain_bad(complain, "LASTCALL_LOG_FILE", v, "a file path", "stderr");
        else
            cfg->log_file = v;
    }
}
