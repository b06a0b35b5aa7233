/* What this architecture gives lastcall, decided at compile time. In core so
 * that the launcher (`lastcall doctor`) can say it too; macros only.
 *
 * Most of lastcall is portable C over Linux system calls. Three parts are
 * tied to an instruction set:
 * - LC_ARCH_DL_STUBS: the exported dlsym/dlvsym/dlopen/dlmopen are assembly
 *   stubs that keep the caller's return address (glibc's dlsym and dlopen are
 *   caller-sensitive, see reach.c). Without them lastcall exports none of the
 *   four: FFI lookups (psycopg 3's ctypes) get libpq's own functions, and the
 *   GOT scan, which runs at the first dlsym after a dlopen, never runs.
 * - LC_ARCH_GOT: the relocation types of GOT entries got.c can read and
 *   rewrite (RTLD_DEEPBIND reach).
 * - safepoint.c (x86-64 only): see DESIGN.md, "The drain thread and exit";
 *   elsewhere the drain thread starts at the first connect
 *   (LC_ARCH_SAFEPOINT_GENERIC below).
 * `lastcall doctor` says which of these the build has. */
#ifndef LC_ARCH_H
#define LC_ARCH_H

#if defined(__linux__) && (defined(__x86_64__) || defined(__aarch64__))
#define LC_ARCH_DL_STUBS 1
#define LC_ARCH_GOT 1
#else
#define LC_ARCH_DL_STUBS 0
#define LC_ARCH_GOT 0
#endif

/* safepoint.c diverts a signalled thread out of its handler on x86-64 only.
 * Elsewhere, with glibc, loader_locks.c still measures ld.so's load and
 * write locks (is this thread running a constructor?) and gives each thread a
 * park-retry timer, so a signal never parks a thread inside a constructor or
 * fork() (DESIGN.md, "Signals"). */
#include <features.h>
#if defined(__linux__) && defined(__GLIBC__) && !defined(__x86_64__)
#define LC_ARCH_SAFEPOINT_GENERIC 1
#else
#define LC_ARCH_SAFEPOINT_GENERIC 0
#endif

#if defined(__x86_64__)
#define LC_ARCH_NAME "x86-64"
#elif defined(__aarch64__)
#define LC_ARCH_NAME "aarch64"
#elif defined(__riscv) && __riscv_xlen == 64
#define LC_ARCH_NAME "riscv64"
#elif defined(__powerpc64__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define LC_ARCH_NAME "ppc64el"
#elif defined(__s390x__)
#define LC_ARCH_NAME "s390x"
#elif defined(__i386__)
#define LC_ARCH_NAME "i386"
#elif defined(__arm__)
#define LC_ARCH_NAME "armhf"
#else
#define LC_ARCH_NAME "this architecture"
#endif

#endif
