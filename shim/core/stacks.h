/* Opening call stacks: captured cheaply (raw return addresses) on the connect
 * path, symbolized only when a report or a warning is written. */
#ifndef LC_STACKS_H
#define LC_STACKS_H

#include <stddef.h>
#include <stdint.h>

struct lc_stack {
    int depth;
    void *frames[];
};

/* NULL when out of memory. Frames inside liblastcall.so are dropped. */
struct lc_stack *stack_capture(int max_depth);
int stack_equal(const struct lc_stack *a, const struct lc_stack *b);

struct lc_frame {
    char function[160];    /* "" when unknown */
    char file[256];        /* "" when unknown */
    int line;              /* 0 when unknown */
    char module[256];
    uintptr_t offset;      /* within module */
};

/* Fills out[0..n): function and file:line from debug information (through
 * addr2line, bounded in time) where there is any, module+offset always. */
void stack_symbolize(const struct lc_stack *stack, struct lc_frame *out);

/* "#0 open_conn app.c:42 (/path/app+0x1234)" */
void stack_format_frame(const struct lc_frame *f, int index, char *buf, size_t size);

#endif
