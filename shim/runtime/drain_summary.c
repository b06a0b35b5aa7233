/* The drain's summary line (LASTCALL_LOG=info and up). */
#include "runtime/drain_summary.h"

#include <stdio.h>

#include "core/config.h"
#include "core/log.h"
#include "shutdown/drain.h"
#include "track/kind.h"

/* "drained 12 PostgreSQL (1 query cancelled) and 3 Redis connections in 4 ms",
 * as it always read while only the always-listed kinds (kinds.h) drained;
 * once another kind did, the kinds that drained any and the cancels last:
 * "drained 2 Redis and 3 MySQL connections (1 query cancelled) in 4 ms". The
 * JSON fields: every always-listed kind, and the others that drained any. */
void summary_log(const char *why, const struct lc_drain_result *r)
{
    unsigned long total = 0;
    int others = 0;
    for (int k = 0; k < lc_kind_count; k++) {
        total += r->closed[k];
        others |= !lc_kind_of(k)->always_listed && r->closed[k] > 0;
    }
    if (lc_log_level < LC_LOG_INFO || total == 0)
        return;
    char fields[400], text[400], cancelled[64];
    snprintf(cancelled, sizeof cancelled, " (%lu quer%s cancelled)", r->cancelled,
             r->cancelled == 1 ? "y" : "ies");
    int shown[LC_KIND_MAX], n_shown = 0;
    for (int k = 0; k < lc_kind_count; k++)
        if (others ? r->closed[k] > 0 : lc_kind_of(k)->always_listed)
            shown[n_shown++] = k;
    size_t fl = (size_t)snprintf(fields, sizeof fields, "\"reason\":\"%s\"", why);
    for (int k = 0; k < lc_kind_count && fl < sizeof fields; k++)
        if (lc_kind_of(k)->always_listed || r->closed[k] > 0)
            fl += (size_t)snprintf(fields + fl, sizeof fields - fl, ",\"%s\":%lu",
                                   lc_kind_of(k)->json, r->closed[k]);
    if (fl < sizeof fields)
        snprintf(fields + fl, sizeof fields - fl, ",\"cancelled\":%lu,\"cut\":%lu,\"ms\":%lld",
                 r->cancelled, r->cut, (long long)r->elapsed_ms);
    size_t tl = 0;
    text[0] = '\0';
    for (int i = 0; i < n_shown && tl < sizeof text; i++) {
        tl += (size_t)snprintf(text + tl, sizeof text - tl, "%s%lu %s",
                               i == 0 ? "" : i == n_shown - 1 ? " and " : ", ",
                               r->closed[shown[i]], lc_kind_of(shown[i])->name);
        if (i == 0 && !others && tl < sizeof text)
            tl += (size_t)snprintf(text + tl, sizeof text - tl, "%s", cancelled);
    }
    lc_event(LC_LOG_INFO, "drain_summary", fields, "%s: drained %s connections%s%s in %lld ms",
             why, text, others ? cancelled : "", r->cut ? " (some cut)" : "",
             (long long)r->elapsed_ms);
}

void summary_log_signal(int sig, const struct lc_drain_result *r)
{
    const char *name = config_signal_name(sig);
    char why[32];
    snprintf(why, sizeof why, "SIG%s", name ? name : "?");
    summary_log(why, r);
}
