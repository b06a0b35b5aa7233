/* Events, one line each: "lastcall[PID]: ..." (text) or one JSON object
 * (LASTCALL_LOG_FORMAT=json), on stderr or LASTCALL_LOG_FILE. Never from a
 * signal handler: formatting uses vsnprintf, which is not async-signal-safe. */
#ifndef LC_LOG_H
#define LC_LOG_H

#include <stddef.h>

#include "core/config.h"

extern int lc_log_level;

/* Applies LASTCALL_LOG_FORMAT / LASTCALL_LOG_FILE; complains once on failure. */
void lc_log_setup(const struct lc_config *cfg);

/* EVENT names the event ("open", "drain", "leak"...); FIELDS is NULL or extra
 * JSON members without braces ("\"kind\":\"redis\",\"count\":3"). */
void lc_event(int level, const char *event, const char *fields, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* For config_load's complaints: printed unless the level is off. */
void lc_log_complaint(const char *line);

/* The descriptor lines go to (stderr or LASTCALL_LOG_FILE), for the few
 * lines written from a signal handler without stdio (stopdelay.c). */
int lc_log_fd(void);

/* Appends S to OUT as a JSON string body (no quotes); returns OUT. */
char *lc_json_escape(char *out, size_t size, const char *s);

#define LC_WARN(...) lc_event(LC_LOG_WARN, "warning", NULL, __VA_ARGS__)
#define LC_INFO(...) do { if (lc_log_level >= LC_LOG_INFO) lc_event(LC_LOG_INFO, "info", NULL, __VA_ARGS__); } while (0)
#define LC_DEBUG(...) do { if (lc_log_level >= LC_LOG_DEBUG) lc_event(LC_LOG_DEBUG, "debug", NULL, __VA_ARGS__); } while (0)

#endif
