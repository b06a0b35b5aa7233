/* What the shim takes from glibc that other C libraries (musl) lack, and
 * what stands in for it there, for the files that use it (platform/libc.h
 * has lc_register_atfork). With glibc it adds only the headers it needs.
 * The stand-ins are in core/libc_compat.c and platform/libc_compat_dl.c
 * (those that call libc through reach.c), built only for other C libraries.
 *
 * musl (Alpine): no gnu/libc-version.h, sys/single_threaded.h, execinfo.h,
 * dlvsym, dlmopen, dladdr1, an exported __sigaction,
 * SA_INTERRUPT. What cannot exist there degrades (shim/DESIGN.md, "Other C
 * libraries"): the drain thread starts at the first connect (no
 * __libc_single_threaded, no safe-point diversion), stacks come from a
 * frame-pointer walk, an exit drain ended by the deadline exits 0 (no
 * on_exit). */
#ifndef LC_LIBC_COMPAT_H
#define LC_LIBC_COMPAT_H

#include <dlfcn.h>
#include <signal.h>
#include <stddef.h>

#ifndef __GLIBC__

/* dlmopen's namespace type, for the dlmopen stub's prototype. */
typedef long Lmid_t;
#ifndef LM_ID_BASE
#define LM_ID_BASE 0
#endif

/* The kernel drops it; glibc's siginterrupt-style setters pass it along. */
#ifndef SA_INTERRUPT
#define SA_INTERRUPT 0x20000000
#endif

/* Any function defined by libc's own object: reach.c finds libc's dlsym and
 * dlopen in the object it lies in (glibc: gnu_get_libc_version). */
#define gnu_get_libc_version dl_iterate_phdr

/* The real sigaction: glibc exports __sigaction, musl keeps its own hidden.
 * libc's sigaction, looked up past lastcall once (at signals_install). */
int lc_libc_sigaction(int sig, const struct sigaction *act, struct sigaction *oldact);
#define __sigaction lc_libc_sigaction

/* No __libc_single_threaded: take every process as threaded (the drain
 * thread starts at the first connect, as on every platform without it). */
#define __libc_single_threaded 0

/* dladdr1(addr, info, &link_map, RTLD_DL_LINKMAP) from dl_iterate_phdr: the
 * map is a per-thread copy (l_addr, l_name, l_ld; no list links), valid
 * until the thread's next call. The main program's l_name is "", as glibc's. */
#ifndef RTLD_DL_LINKMAP
#define RTLD_DL_LINKMAP 2
#endif
int lc_dladdr1(const void *addr, Dl_info *info, void **extra, int flags);
#define dladdr1 lc_dladdr1

/* backtrace() by the frame-pointer chain (the library is built with
 * -fno-omit-frame-pointer there; so must a program be whose stacks matter),
 * bounded by the thread's stack. */
int lc_backtrace(void **buffer, int size);
#define backtrace lc_backtrace

/* reach.c's stand-ins for libc's dlvsym and dlmopen, which its exported
 * stubs of those names tail-call: a version is ignored (musl has no symbol
 * versions), and only the base namespace exists. */
void *lc_compat_dlvsym(void *handle, const char *name, const char *version);
void *lc_compat_dlmopen(Lmid_t lmid, const char *file, int mode);

#endif /* !__GLIBC__ */

#endif
