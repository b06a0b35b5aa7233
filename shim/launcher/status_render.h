/* The answer to `lastcall status`, parsed (status_render.c) and rendered as
 * text or JSON for the status client (status_client.c). */
#ifndef LC_STATUS_RENDER_H
#define LC_STATUS_RENDER_H

#include <stddef.h>
#include <sys/types.h>

enum { N_STATES = 4 };

struct tally {
    unsigned long live, by_state[N_STATES];
    long long oldest_ms;
};

struct conn {
    int kind;
    int state;
    long long age_ms;
    char *target;
};

struct frame {
    char *fields[6]; /* formatted, function, file, line, module, offset */
};

struct group {
    int kind;
    unsigned long count;
    int failed;
    long long first_ms;
    char *target;
    struct frame *frames;
    int n_frames;
};

/* A kind of connection, as the answer's kind lines describe it. */
struct kind_info {
    const char *word;  /* as in JSON: "postgresql" */
    const char *title; /* as in text: "PostgreSQL" */
    int listed;        /* shown even when none is open */
    int has_tx;        /* has a transaction state to report */
};
#define MAX_KINDS 16

struct answer {
    struct kind_info kinds[MAX_KINDS];
    int n_kinds;
    long pid;
    char *program;
    long long now_ms;
    struct conn *conns;
    size_t n_conns;
    struct group *groups;
    size_t n_groups;
    char *error;
    int complete;
};

/* A doubled array (FIRST elements the first time): the new pointer, or NULL
 * with P and *CAP as they were. */
void *grow(void *p, size_t *cap, size_t elem, size_t first);
/* Parses TEXT (the protocol's lines, changed in place) into A: 0, or -1
 * when it is not a status answer. */
int parse(char *text, struct answer *a);
void render_json(const struct answer *a, pid_t pid, int stacks);
void render_text(const struct answer *a, pid_t pid, int stacks);

#endif
