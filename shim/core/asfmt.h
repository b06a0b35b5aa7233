/* Formatting into a fixed buffer without stdio, for the few lines lastcall
 * writes from a signal handler (snprintf is not async-signal-safe). */
#ifndef LC_ASFMT_H
#define LC_ASFMT_H

#include <stddef.h>
#include <stdint.h>

struct asfmt {
    char b[600];
    size_t n; /* always leaves room for a final newline */
};

static inline void asfmt_str(struct asfmt *l, const char *s)
{
    while (*s && l->n < sizeof l->b - 2)
        l->b[l->n++] = *s++;
}

/* Decimal, zero-padded to WIDTH digits. */
static inline void asfmt_num(struct asfmt *l, int64_t v, int width)
{
    char tmp[24];
    int i = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[i++] = (char)('0' + u % 10);
        u /= 10;
    } while (u && i < 20);
    while (i < width && i < 20)
        tmp[i++] = '0';
    if (v < 0)
        tmp[i++] = '-';
    while (i > 0 && l->n < sizeof l->b - 2)
        l->b[l->n++] = tmp[--i];
}

/* Lower-case hex, exactly DIGITS digits. */
static inline void asfmt_hex(struct asfmt *l, uint64_t v, int digits)
{
    for (int i = digits - 1; i >= 0 && l->n < sizeof l->b - 2; i--)
        l->b[l->n++] = "0123456789abcdef"[(v >> (4 * i)) & 0xf];
}

#endif
