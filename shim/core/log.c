#define _GNU_SOURCE
#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int lc_log_level = LC_LOG_WARN;
static int log_fd = STDERR_FILENO;
static int log_json;

static const char *level_names[] = {"off", "warn", "info", "debug"};

static void write_all(const char *buf, size_t n)
{
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(log_fd, buf + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += (size_t)w;
    }
}

int lc_log_fd(void)
{
    return log_fd;
}

char *lc_json_escape(char *out, size_t size, const char *s)
{
    size_t o = strlen(out);
    for (; s && *s && o + 7 < size; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, size - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o < size ? o : size - 1] = '\0';
    return out;
}

static void emit(int level, const char *event, const char *fields, const char *msg)
{
    char line[4096];
    int n;
    if (log_json) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        char esc[2048] = "";
        lc_json_escape(esc, sizeof esc, msg);
        n = snprintf(line, sizeof line,
                     "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"pid\":%d,"
                     "\"level\":\"%s\",\"event\":\"%s\",\"message\":\"%s\"%s%s}\n",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, (int)getpid(),
                     level_names[level > 0 && level < 4 ? level : 1], event, esc,
                     fields ? "," : "", fields ? fields : "");
    } else {
        n = snprintf(line, sizeof line, "lastcall[%d]: %s\n", (int)getpid(), msg);
    }
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line) {
        n = sizeof line - 1;
        line[n - 1] = '\n';
    }
    /* One write() so lines from several threads or processes do not interleave. */
    write_all(line, (size_t)n);
}

void lc_event(int level, const char *event, const char *fields, const char *fmt, ...)
{
    if (level > lc_log_level || lc_log_level == LC_LOG_OFF)
        return;
    int saved = errno;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    emit(level, event, fields, msg);
    errno = saved;
}

void lc_log_complaint(const char *line)
{
    int saved = errno;
    emit(LC_LOG_WARN, "config", NULL, line);
    errno = saved;
}

void lc_log_setup(const struct lc_config *cfg)
{
    lc_log_level = cfg->log_level;
    log_json = cfg->log_format == LC_FORMAT_JSON;
    if (cfg->log_file == NULL || cfg->log_level == LC_LOG_OFF)
        return;
    /* O_NOFOLLOW: a planted symlink must not redirect our lines. */
    int fd = open(cfg->log_file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        lc_event(LC_LOG_WARN, "config", NULL, "cannot open LASTCALL_LOG_FILE %s: %s; logging to stderr",
                 cfg->log_file, strerror(errno));
        return;
    }
    /* Keep it out of the low descriptors a program may assume are free. */
    int high = fcntl(fd, F_DUPFD_CLOEXEC, 100);
    if (high >= 0) {
        close(fd);
        fd = high;
    }
    log_fd = fd;
}
