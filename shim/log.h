/* One line per event on stderr: "lastcall[PID]: ...". Never from a signal
 * handler: formatting uses vsnprintf, which is not async-signal-safe. */
#ifndef LC_LOG_H
#define LC_LOG_H

#include "config.h"

extern int lc_log_level;

void lc_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* For config_load's complaints: always printed unless the level is off. */
void lc_log_complaint(const char *line);

#define LC_WARN(...) lc_log(LC_LOG_WARN, __VA_ARGS__)
#define LC_INFO(...) do { if (lc_log_level >= LC_LOG_INFO) lc_log(LC_LOG_INFO, __VA_ARGS__); } while (0)
#define LC_DEBUG(...) do { if (lc_log_level >= LC_LOG_DEBUG) lc_log(LC_LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
