/* What lastcall tells a person or a log pipeline about the connections it
 * tracks: the exit leak report, live leak warnings and status snapshots. */
#ifndef LC_REPORT_H
#define LC_REPORT_H

#include "core/registry.h"

/* LASTCALL_REPORT: written atomically (temp file, rename), mode 0600. "%p" in
 * the path becomes the pid. Called at the end of an exit or signal drain. */
void report_write(void);

/* LASTCALL_LEAK_THRESHOLD: called after each tracked connect. */
void report_check_threshold(int kind);
/* LASTCALL_LEAK_AGE: called periodically from the drain thread. */
void report_check_idle(void);
/* The program used a handle that had been reported idle. */
void report_no_longer_suspect(const struct lc_entry *copy);

/* LASTCALL_STATUS_SIGNAL: one snapshot, logged. */
void report_status(void);

#endif
