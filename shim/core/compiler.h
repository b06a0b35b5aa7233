/* Attributes every layer uses. */
#ifndef LC_COMPILER_H
#define LC_COMPILER_H

#define LC_EXPORT __attribute__((visibility("default")))
/* Code every process runs while it starts (our constructor's path), kept
 * together with the constructor in .text.startup: the kernel maps a
 * library's code around each page fault in 64 KiB windows, so code spread
 * over the library costs every process (a shell, /bin/true) more resident
 * memory and faults (issue 13). */
#define LC_STARTUP __attribute__((section(".text.startup")))

#define LC_LIKELY(x) __builtin_expect(!!(x), 1)
#define LC_UNLIKELY(x) __builtin_expect(!!(x), 0)

#endif
