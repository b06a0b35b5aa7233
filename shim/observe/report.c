#define _GNU_SOURCE
#include "observe/report.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "track/inflight.h"
#include "track/kind.h"
#include "core/clock.h"
#include "core/kind_id.h"
#include "core/log.h"
#include "core/process.h"
#include "core/stacks.h"

static const char *kind_name(int kind)
{
    return lc_kind_of(kind)->name;
}

static const char *kind_json(int kind)
{
    return lc_kind_of(kind)->json;
}

/* The kinds a report lists, in table order; returns how many. */
static int listed_kinds(int *out)
{
    int n = 0;
    for (int k = 0; k < lc_kind_count; k++)
        if (lc_kind_listed(k))
            out[n++] = k;
    return n;
}

static void iso_time(int64_t ms, char *out, size_t size)
{
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    if (size < 32)
        return;
    snprintf(out, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

/* ---- grouping by identical opening stack ---- */

struct group {
    const struct lc_entry *first;   /* a representative: kind, failed, target, stack */
    size_t count;
    int64_t first_opened_at;
};

static int same_group(const struct lc_entry *a, const struct lc_entry *b)
{
    return a->kind == b->kind && a->failed == b->failed && strcmp(a->target, b->target) == 0 &&
           stack_equal(a->stack, b->stack);
}

static int by_count_desc(const void *a, const void *b)
{
    const struct group *x = a, *y = b;
    if (x->count != y->count)
        return x->count < y->count ? 1 : -1;
    return x->first_opened_at < y->first_opened_at ? -1 : x->first_opened_at > y->first_opened_at;
}

static size_t group_entries(const struct lc_entry *entries, size_t n, struct group *groups)
{
    size_t g = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k;
        for (k = 0; k < g; k++)
            if (same_group(groups[k].first, &entries[i]))
                break;
        if (k == g) {
            groups[g].first = &entries[i];
            groups[g].count = 0;
            groups[g].first_opened_at = entries[i].opened_at_ms;
            g++;
        }
        groups[k].count++;
        if (entries[i].opened_at_ms < groups[k].first_opened_at)
            groups[k].first_opened_at = entries[i].opened_at_ms;
    }
    qsort(groups, g, sizeof *groups, by_count_desc);
    return g;
}

/* Symbolizes STACK and hands each formatted frame to EMIT. */
static void for_each_frame(const struct lc_stack *stack, void (*emit)(const char *line, void *ctx),
                           void *ctx)
{
    if (stack == NULL)
        return;
    struct lc_frame frames[LC_MAX_STACK_DEPTH];
    stack_symbolize(stack, frames);
    for (int i = 0; i < stack->depth; i++) {
        char line[800];
        stack_format_frame(&frames[i], i, line, sizeof line);
        emit(line, ctx);
    }
}

struct file_ctx {
    FILE *f;
    const char *indent;
};

static void frame_to_file(const char *line, void *ctx)
{
    struct file_ctx *c = ctx;
    fprintf(c->f, "%s  %s\n", c->indent, line);
}

static void frame_to_log(const char *line, void *event)
{
    lc_event(LC_LOG_WARN, (const char *)event, NULL, "    %s", line);
}

/* "3 PostgreSQL connections to /run/pg:5432/app leaked, opened at:" and the frames. */
static void text_group(FILE *f, const struct group *gr, const char *indent)
{
    const struct lc_entry *e = gr->first;
    fprintf(f, "%s%zu %s %s to %s %s, opened at:\n", indent, gr->count, kind_name(e->kind),
            e->failed ? (gr->count == 1 ? "failed connect" : "failed connects")
                      : (gr->count == 1 ? "connection" : "connections"),
            e->target, e->failed ? "never freed" : "leaked");
    if (e->stack == NULL || e->stack->depth == 0) {
        fprintf(f, "%s  (no stack: LASTCALL_STACKS is off)\n", indent);
        return;
    }
    struct file_ctx ctx = {f, indent};
    for_each_frame(e->stack, frame_to_file, &ctx);
}

static void json_string(FILE *f, const char *s)
{
    char buf[1024] = "";
    lc_json_escape(buf, sizeof buf, s);
    fprintf(f, "\"%s\"", buf);
}

static void json_group(FILE *f, const struct group *gr)
{
    const struct lc_entry *e = gr->first;
    char when[64];
    iso_time(gr->first_opened_at, when, sizeof when);
    fprintf(f, "    {\"kind\": \"%s\", \"count\": %zu, \"failed\": %s, \"target\": ",
            kind_json(e->kind), gr->count, e->failed ? "true" : "false");
    json_string(f, e->target);
    fprintf(f, ", \"first_opened_at\": \"%s\", \"stack\": [", when);
    if (e->stack && e->stack->depth > 0) {
        struct lc_frame frames[LC_MAX_STACK_DEPTH];
        stack_symbolize(e->stack, frames);
        for (int i = 0; i < e->stack->depth; i++) {
            struct lc_frame *fr = &frames[i];
            fprintf(f, "%s\n      {\"function\": ", i ? "," : "");
            if (fr->function[0])
                json_string(f, fr->function);
            else
                fprintf(f, "null");
            fprintf(f, ", \"file\": ");
            if (fr->file[0])
                json_string(f, fr->file);
            else
                fprintf(f, "null");
            if (fr->line > 0)
                fprintf(f, ", \"line\": %d", fr->line);
            else
                fprintf(f, ", \"line\": null");
            fprintf(f, ", \"module\": ");
            json_string(f, fr->module);
            fprintf(f, ", \"offset\": \"0x%lx\"}", (unsigned long)fr->offset);
        }
        fprintf(f, "\n    ");
    }
    fprintf(f, "]}");
}

static void expand_path(const char *tmpl, char *out, size_t size)
{
    size_t o = 0;
    for (const char *p = tmpl; *p && o + 12 < size; p++) {
        if (p[0] == '%' && p[1] == 'p') {
            o += (size_t)snprintf(out + o, size - o, "%d", (int)getpid());
            p++;
        } else {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
}

void report_write(void)
{
    if (lc_cfg.report_path == NULL)
        return;
    char path[4096];
    expand_path(lc_cfg.report_path, path, sizeof path);

    struct lc_registry_counts c;
    registry_counts(&c);
    struct lc_entry *entries = NULL;
    size_t n = registry_snapshot(getpid(), -1, &entries);
    unsigned long leaked[LC_KIND_MAX] = {0}, by_lastcall[LC_KIND_MAX] = {0},
                  failed_leaked[LC_KIND_MAX] = {0};
    int kinds[LC_KIND_MAX], n_kinds = listed_kinds(kinds);
    for (size_t i = 0; i < n; i++) {
        if (entries[i].failed)
            failed_leaked[entries[i].kind]++;
        else
            leaked[entries[i].kind]++;
        if (entries[i].state == LC_ENTRY_DRAINED && !entries[i].failed)
            by_lastcall[entries[i].kind]++;
    }
    struct group *groups = calloc(n ? n : 1, sizeof *groups);
    size_t g = groups ? group_entries(entries, n, groups) : 0;

    /* Atomic: a temp file beside the target (created O_EXCL, so never through
     * a symlink, mode 0600), then rename, which replaces a link rather than
     * following it. */
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path);
    mode_t old_mask = umask(077);
    int fd = mkstemp(tmp);
    umask(old_mask);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (f == NULL) {
        LC_WARN("cannot write the leak report %s: %s", path, strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(tmp);
        }
        registry_free_snapshot(entries, n);
        free(groups);
        return;
    }
    char exe[512] = "";
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[el > 0 ? el : 0] = '\0';

    if (lc_cfg.report_format == LC_FORMAT_JSON) {
        fprintf(f, "{\n  \"lastcall\": \"%s\",\n  \"pid\": %d,\n  \"program\": ", "0.1.0",
                (int)getpid());
        json_string(f, exe);
        fprintf(f, ",\n  \"totals\": {\n");
        for (int i = 0; i < n_kinds; i++) {
            int k = kinds[i];
            fprintf(f,
                    "    \"%s\": {\"opened\": %lu, \"closed\": %lu, \"failed\": %lu, "
                    "\"leaked\": %lu, \"failed_never_freed\": %lu, "
                    "\"closed_by_lastcall\": %lu}%s\n",
                    kind_json(k), c.opened[k], c.closed[k], c.failed[k], leaked[k],
                    failed_leaked[k], by_lastcall[k], i + 1 < n_kinds ? "," : "");
        }
        fprintf(f, "  },\n  \"leaks\": [");
        for (size_t i = 0; i < g; i++) {
            fprintf(f, "%s\n", i ? "," : "");
            json_group(f, &groups[i]);
        }
        fprintf(f, "%s]\n}\n", g ? "\n  " : "");
    } else {
        fprintf(f, "lastcall leak report: pid %d, %s\n\n", (int)getpid(), exe);
        for (int i = 0; i < n_kinds; i++) {
            int k = kinds[i];
            fprintf(f,
                    "%-10s opened %lu, closed by the program %lu, failed connects %lu, "
                    "left open %lu (closed by lastcall %lu), failed and never freed %lu\n",
                    kind_name(k), c.opened[k], c.closed[k], c.failed[k], leaked[k],
                    by_lastcall[k], failed_leaked[k]);
        }
        if (g == 0)
            fprintf(f, "\nNo leaks.\n");
        for (size_t i = 0; i < g; i++) {
            fprintf(f, "\n");
            text_group(f, &groups[i], "");
        }
    }
    int bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        LC_WARN("cannot write the leak report %s: %s", path, strerror(errno));
        unlink(tmp);
    } else {
        lc_event(LC_LOG_INFO, "report", NULL, "leak report written to %s", path);
    }
    registry_free_snapshot(entries, n);
    free(groups);
}

/* Logs the top opening stacks of ENTRIES, each frame as a line. */
static void log_top_stacks(const char *event, struct lc_entry *entries, size_t n, size_t top)
{
    struct group *groups = calloc(n ? n : 1, sizeof *groups);
    if (groups == NULL)
        return;
    size_t g = group_entries(entries, n, groups);
    for (size_t i = 0; i < g && i < top; i++) {
        const struct lc_entry *e = groups[i].first;
        char fields[600] = "";
        char target[300] = "";
        lc_json_escape(target, sizeof target, e->target);
        snprintf(fields, sizeof fields, "\"kind\":\"%s\",\"count\":%zu,\"target\":\"%s\"",
                 kind_json(e->kind), groups[i].count, target);
        lc_event(LC_LOG_WARN, event, fields, "  %zu opened at:", groups[i].count);
        for_each_frame(e->stack, frame_to_log, (void *)event);
    }
    free(groups);
}

void report_check_threshold(int kind)
{
    static int warned[LC_KIND_MAX];
    if (lc_cfg.leak_threshold <= 0 || __atomic_load_n(&warned[kind], __ATOMIC_ACQUIRE))
        return;
    struct lc_registry_counts c;
    registry_counts(&c);
    if ((long)c.live[kind] <= lc_cfg.leak_threshold)
        return;
    if (__atomic_exchange_n(&warned[kind], 1, __ATOMIC_ACQ_REL))
        return;
    char fields[200];
    snprintf(fields, sizeof fields, "\"kind\":\"%s\",\"live\":%lu,\"threshold\":%ld",
             kind_json(kind), c.live[kind], lc_cfg.leak_threshold);
    lc_event(LC_LOG_WARN, "leak_threshold", fields,
             "%lu live %s connections, above LASTCALL_LEAK_THRESHOLD=%ld; top opening stacks:",
             c.live[kind], kind_name(kind), lc_cfg.leak_threshold);
    struct lc_entry *entries = NULL;
    size_t n = registry_snapshot(getpid(), kind, &entries);
    log_top_stacks("leak_threshold", entries, n, 3);
    registry_free_snapshot(entries, n);
}

void report_check_idle(void)
{
    if (lc_cfg.leak_age_ms <= 0)
        return;
    struct lc_entry *entries = NULL;
    size_t n = registry_find_idle(getpid(), lc_now_ms(), lc_cfg.leak_age_ms, &entries);
    for (size_t i = 0; i < n; i++) {
        struct lc_entry *e = &entries[i];
        char fields[400], target[300] = "";
        lc_json_escape(target, sizeof target, e->target);
        snprintf(fields, sizeof fields,
                 "\"kind\":\"%s\",\"handle\":\"%p\",\"target\":\"%s\",\"idle_ms\":%lld",
                 kind_json(e->kind), e->handle, target, (long long)(lc_now_ms() - e->last_used_ms));
        lc_event(LC_LOG_WARN, "leak_suspect", fields,
                 "%s connection %p to %s idle for %lld ms (LASTCALL_LEAK_AGE): suspected leak, "
                 "opened at:",
                 kind_name(e->kind), e->handle, e->target,
                 (long long)(lc_now_ms() - e->last_used_ms));
        for_each_frame(e->stack, frame_to_log, (void *)"leak_suspect");
    }
    registry_free_snapshot(entries, n);
}

void report_no_longer_suspect(const struct lc_entry *e)
{
    char fields[200];
    snprintf(fields, sizeof fields, "\"kind\":\"%s\",\"handle\":\"%p\"", kind_json(e->kind),
             e->handle);
    lc_event(LC_LOG_WARN, "leak_cleared", fields,
             "%s connection %p to %s is in use again: no longer suspect", kind_name(e->kind),
             e->handle, e->target);
}

void report_status(void)
{
    struct lc_entry *entries = NULL;
    size_t n = registry_snapshot(getpid(), -1, &entries);
    int64_t now_real;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    now_real = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    unsigned long live[LC_KIND_MAX] = {0}, busy[LC_KIND_MAX] = {0}, idle[LC_KIND_MAX] = {0},
                  in_tx[LC_KIND_MAX] = {0}, failed[LC_KIND_MAX] = {0};
    void *inside[1024];
    size_t n_inside = inflight_snapshot(inside, 1024);
    int64_t oldest[LC_KIND_MAX] = {0};
    for (size_t i = 0; i < n; i++) {
        struct lc_entry *e = &entries[i];
        int k = e->kind;
        live[k]++;
        if (e->failed)
            failed[k]++;
        else if (inflight_contains(inside, n_inside, e->handle))
            busy[k]++;
        else if (e->in_transaction)
            in_tx[k]++;
        else
            idle[k]++;
        int64_t age = now_real - e->opened_at_ms;
        if (age > oldest[k])
            oldest[k] = age;
    }
    char targets[1500] = "";
    size_t tl = 0;
    for (size_t i = 0; i < n; i++) {
        int seen = 0;
        for (size_t j = 0; j < i; j++)
            if (strcmp(entries[j].target, entries[i].target) == 0)
                seen = 1;
        if (seen)
            continue;
        size_t count = 0;
        for (size_t j = i; j < n; j++)
            if (strcmp(entries[j].target, entries[i].target) == 0)
                count++;
        if (tl + 200 < sizeof targets)
            tl += (size_t)snprintf(targets + tl, sizeof targets - tl, "%s%s %zu",
                                   tl ? ", " : "", entries[i].target, count);
    }
    int kinds[LC_KIND_MAX], n_kinds = listed_kinds(kinds);
    for (int i = 0; i < n_kinds; i++) {
        int k = kinds[i];
        char fields[400];
        snprintf(fields, sizeof fields,
                 "\"kind\":\"%s\",\"live\":%lu,\"in_flight\":%lu,\"idle\":%lu,"
                 "\"idle_in_transaction\":%lu,\"failed\":%lu,\"oldest_ms\":%lld",
                 kind_json(k), live[k], busy[k], idle[k], in_tx[k], failed[k],
                 (long long)oldest[k]);
        lc_event(LC_LOG_WARN, "status", fields,
                 "status: %s live %lu (in flight %lu, idle %lu, idle in transaction %lu, "
                 "failed %lu), oldest %.1f s",
                 kind_name(k), live[k], busy[k], idle[k], in_tx[k], failed[k],
                 (double)oldest[k] / 1000.0);
    }
    char esc[1600] = "", fields[1700];
    lc_json_escape(esc, sizeof esc, targets);
    snprintf(fields, sizeof fields, "\"targets\":\"%s\"", esc);
    lc_event(LC_LOG_WARN, "status", fields, "status: per target: %s", n ? targets : "none");
    registry_free_snapshot(entries, n);
}
