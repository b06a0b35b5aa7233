/* The drain's summary line (drain_summary.c). */
#ifndef LC_DRAIN_SUMMARY_H
#define LC_DRAIN_SUMMARY_H

#include <stdint.h>

struct lc_drain_result;

/* "exit: drained 2 PostgreSQL connections (1 query cancelled) in 4 ms". */
void summary_log(const char *why, const struct lc_drain_result *r);
void summary_log_signal(int sig, const struct lc_drain_result *r);

#endif
