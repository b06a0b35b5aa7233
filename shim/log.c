#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int lc_log_level = LC_LOG_WARN;

static void write_line(const char *msg)
{
    char line[1024];
    int n = snprintf(line, sizeof line, "lastcall[%d]: %s\n", (int)getpid(), msg);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line) {
        n = sizeof line - 1;
        line[n - 1] = '\n';
    }
    /* One write() so lines from several threads or processes do not interleave. */
    ssize_t off = 0;
    while (off < n) {
        ssize_t w = write(STDERR_FILENO, line + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += w;
    }
}

void lc_log(int level, const char *fmt, ...)
{
    if (level > lc_log_level || lc_log_level == LC_LOG_OFF)
        return;
    int saved = errno;
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    write_line(msg);
    errno = saved;
}

void lc_log_complaint(const char *line)
{
    int saved = errno;
    write_line(line);
    errno = saved;
}
