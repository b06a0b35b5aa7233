/* Rendering `lastcall status`: the answer's lines parsed, then shown as text
 * a person reads or as JSON. */
#define _GNU_SOURCE
#include "launcher/status_render.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/status_protocol.h"

/* A doubled array (FIRST elements the first time): the new pointer, or NULL
 * with P and *CAP as they were. */
void *grow(void *p, size_t *cap, size_t elem, size_t first)
{
    size_t want = *cap ? *cap * 2 : first;
    void *bigger = realloc(p, want * elem);
    if (bigger != NULL)
        *cap = want;
    return bigger;
}

static const char *state_words[N_STATES] = {"in_flight", "idle", "idle_in_transaction",
                                            "failed"};

/* The library's kind table comes in the answer's kind lines; a kind named
 * only by a connection (a library that sent none) is shown by its word. */
static int kind_of_word(struct answer *a, const char *w)
{
    for (int k = 0; k < a->n_kinds; k++)
        if (strcmp(w, a->kinds[k].word) == 0)
            return k;
    if (a->n_kinds == MAX_KINDS)
        return 0;
    a->kinds[a->n_kinds] = (struct kind_info){w, w, 0, 1};
    return a->n_kinds++;
}

static int split(char *line, char **f, int max)
{
    /* By hand: strtok would merge empty fields. */
    int n = 0;
    f[n++] = line;
    for (char *p = line; *p && n < max; p++)
        if (*p == '\t') {
            *p = '\0';
            f[n++] = p + 1;
        }
    return n;
}

int parse(char *text, struct answer *a)
{
    memset(a, 0, sizeof *a);
    char *save = NULL;
    char *line = strtok_r(text, "\n", &save);
    if (line == NULL || strcmp(line, LC_STATUS_VERSION_LINE) != 0)
        return -1;
    size_t cap_c = 0, cap_g = 0;
    while ((line = strtok_r(NULL, "\n", &save)) != NULL) {
        char *f[8];
        int n = split(line, f, 8);
        if (strcmp(f[0], "end") == 0) {
            a->complete = 1;
            break;
        }
        if (strcmp(f[0], "pid") == 0 && n >= 2) {
            a->pid = atol(f[1]);
        } else if (strcmp(f[0], "program") == 0 && n >= 2) {
            a->program = f[1];
        } else if (strcmp(f[0], "now_ms") == 0 && n >= 2) {
            a->now_ms = atoll(f[1]);
        } else if (strcmp(f[0], "error") == 0 && n >= 2) {
            a->error = f[1];
        } else if (strcmp(f[0], "kind") == 0 && n >= 5) {
            int k = kind_of_word(a, f[1]);
            a->kinds[k].title = f[2];
            a->kinds[k].listed = atoi(f[3]);
            a->kinds[k].has_tx = atoi(f[4]);
        } else if (strcmp(f[0], "conn") == 0 && n >= 5) {
            if (a->n_conns == cap_c) {
                struct conn *c = grow(a->conns, &cap_c, sizeof *c, 64);
                if (c == NULL)
                    return -1;
                a->conns = c;
            }
            struct conn *c = &a->conns[a->n_conns++];
            c->kind = kind_of_word(a, f[1]);
            c->state = 1;
            for (int s = 0; s < N_STATES; s++)
                if (strcmp(f[2], state_words[s]) == 0)
                    c->state = s;
            c->age_ms = atoll(f[3]);
            c->target = f[4];
        } else if (strcmp(f[0], "group") == 0 && n >= 6) {
            if (a->n_groups == cap_g) {
                struct group *g = grow(a->groups, &cap_g, sizeof *g, 16);
                if (g == NULL)
                    return -1;
                a->groups = g;
            }
            struct group *g = &a->groups[a->n_groups++];
            g->kind = kind_of_word(a, f[1]);
            g->count = strtoul(f[2], NULL, 10);
            g->failed = atoi(f[3]);
            g->first_ms = atoll(f[4]);
            g->target = f[5];
            g->frames = NULL;
            g->n_frames = 0;
        } else if (strcmp(f[0], "frame") == 0 && n >= 7 && a->n_groups > 0) {
            struct group *g = &a->groups[a->n_groups - 1];
            struct frame *fr = realloc(g->frames, (size_t)(g->n_frames + 1) * sizeof *fr);
            if (fr == NULL)
                return -1;
            g->frames = fr;
            for (int i = 0; i < 6; i++)
                fr[g->n_frames].fields[i] = f[i + 1];
            g->n_frames++;
        }
    }
    return 0;
}

static void add(struct tally *t, const struct conn *c)
{
    t->live++;
    t->by_state[c->state]++;
    if (c->age_ms > t->oldest_ms)
        t->oldest_ms = c->age_ms;
}

static void json_str(const char *s)
{
    putchar('"');
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

static void json_tally(const struct tally *t)
{
    printf("\"live\": %lu, \"in_flight\": %lu, \"idle\": %lu, \"idle_in_transaction\": %lu, "
           "\"failed\": %lu, \"oldest_ms\": %lld",
           t->live, t->by_state[0], t->by_state[1], t->by_state[2], t->by_state[3],
           t->oldest_ms);
}

static void text_tally(const struct tally *t, int has_tx)
{
    printf("%lu live", t->live);
    if (t->live == 0) {
        putchar('\n');
        return;
    }
    printf(" (in flight %lu, idle %lu", t->by_state[0], t->by_state[1]);
    if (has_tx)
        printf(", idle in transaction %lu", t->by_state[2]);
    printf(", failed %lu), oldest %.1f s\n", t->by_state[3], (double)t->oldest_ms / 1000.0);
}

static void iso_time(long long ms, char *out, size_t size)
{
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    snprintf(out, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

/* The distinct targets of KIND, in first-seen order. */
static size_t targets_of(const struct answer *a, int kind, const char **out)
{
    size_t n = 0;
    for (size_t i = 0; i < a->n_conns; i++) {
        if (a->conns[i].kind != kind)
            continue;
        size_t j;
        for (j = 0; j < n; j++)
            if (strcmp(out[j], a->conns[i].target) == 0)
                break;
        if (j == n)
            out[n++] = a->conns[i].target;
    }
    return n;
}

static void tally_of(const struct answer *a, int kind, const char *target, struct tally *t)
{
    memset(t, 0, sizeof *t);
    for (size_t i = 0; i < a->n_conns; i++)
        if (a->conns[i].kind == kind && (target == NULL || strcmp(a->conns[i].target, target) == 0))
            add(t, &a->conns[i]);
}

void render_json(const struct answer *a, pid_t pid, int stacks)
{
    char when[64] = "";
    if (a->now_ms)
        iso_time(a->now_ms, when, sizeof when);
    printf("{\n  \"pid\": %d,\n", (int)pid);
    if (a->pid != pid)
        printf("  \"pid_in_namespace\": %ld,\n", a->pid);
    printf("  \"program\": ");
    json_str(a->program ? a->program : "");
    printf(",\n  \"time\": ");
    if (a->now_ms)
        json_str(when);
    else
        printf("null");
    const char **targets = calloc(a->n_conns + 1, sizeof *targets);
    for (int k = 0; k < a->n_kinds; k++) {
        struct tally t;
        tally_of(a, k, NULL, &t);
        if (!a->kinds[k].listed && t.live == 0)
            continue;
        printf(",\n  \"%s\": {", a->kinds[k].word);
        json_tally(&t);
        printf(", \"targets\": [");
        size_t nt = targets ? targets_of(a, k, targets) : 0;
        for (size_t i = 0; i < nt; i++) {
            struct tally tt;
            tally_of(a, k, targets[i], &tt);
            printf("%s\n    {\"target\": ", i ? "," : "");
            json_str(targets[i]);
            printf(", ");
            json_tally(&tt);
            printf("}");
        }
        printf("%s]}", nt ? "\n  " : "");
    }
    free(targets);
    if (stacks) {
        printf(",\n  \"stacks\": [");
        for (size_t i = 0; i < a->n_groups; i++) {
            const struct group *g = &a->groups[i];
            iso_time(g->first_ms, when, sizeof when);
            printf("%s\n    {\"kind\": \"%s\", \"count\": %lu, \"failed\": %s, \"target\": ",
                   i ? "," : "", a->kinds[g->kind].word, g->count, g->failed ? "true" : "false");
            json_str(g->target);
            printf(", \"first_opened_at\": \"%s\", \"stack\": [", when);
            for (int k = 0; k < g->n_frames; k++) {
                char *const *f = g->frames[k].fields;
                printf("%s\n      {\"function\": ", k ? "," : "");
                if (*f[1])
                    json_str(f[1]);
                else
                    printf("null");
                printf(", \"file\": ");
                if (*f[2])
                    json_str(f[2]);
                else
                    printf("null");
                if (atoi(f[3]) > 0)
                    printf(", \"line\": %d", atoi(f[3]));
                else
                    printf(", \"line\": null");
                printf(", \"module\": ");
                json_str(f[4]);
                printf(", \"offset\": ");
                json_str(f[5]);
                printf("}");
            }
            printf("%s]}", g->n_frames ? "\n    " : "");
        }
        printf("%s]", a->n_groups ? "\n  " : "");
    }
    printf("\n}\n");
}

void render_text(const struct answer *a, pid_t pid, int stacks)
{
    printf("lastcall status: pid %d", (int)pid);
    if (a->pid != pid)
        printf(" (%ld in its PID namespace)", a->pid);
    printf(", %s\n", a->program ? a->program : "?");
    const char **targets = calloc(a->n_conns + 1, sizeof *targets);
    for (int k = 0; k < a->n_kinds; k++) {
        struct tally t;
        tally_of(a, k, NULL, &t);
        if (!a->kinds[k].listed && t.live == 0)
            continue;
        printf("%s: ", a->kinds[k].title);
        text_tally(&t, a->kinds[k].has_tx);
        size_t nt = targets ? targets_of(a, k, targets) : 0;
        for (size_t i = 0; i < nt; i++) {
            struct tally tt;
            tally_of(a, k, targets[i], &tt);
            printf("  %s: ", targets[i]);
            text_tally(&tt, a->kinds[k].has_tx);
        }
    }
    free(targets);
    if (!stacks)
        return;
    if (a->n_groups == 0)
        printf("\nNo connection is open.\n");
    for (size_t i = 0; i < a->n_groups; i++) {
        const struct group *g = &a->groups[i];
        printf("\n%lu %s %s to %s, opened at:\n", g->count, a->kinds[g->kind].title,
               g->failed ? (g->count == 1 ? "failed connect" : "failed connects")
                         : (g->count == 1 ? "connection" : "connections"),
               g->target);
        if (g->n_frames == 0)
            printf("  (no stack: the process runs with LASTCALL_STACKS off)\n");
        for (int k = 0; k < g->n_frames; k++)
            printf("  %s\n", g->frames[k].fields[0]);
    }
}

