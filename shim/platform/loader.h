/* libc's own loader entry points (dlsym, dlvsym, dlopen, dlmopen) and the
 * objects loaded into this process, for lastcall's own lookups.
 *
 * The bottom of the platform layer's loader code: got.c reads ELF, this file
 * finds libc's functions and searches the loaded objects, symbols.c finds the
 * real libpq/hiredis/libssl functions with them, and reach.c (the dlsym/dlopen
 * interposition and the GOT scan) sits on top of all three. Nothing here calls
 * symbols.c or reach.c.
 *
 * Built without sanitizer instrumentation, like reach.c: sanitizer runtimes
 * call dlsym (our stub) while they start, and the stub reads this file's
 * pointers. */
#ifndef LC_LOADER_H
#define LC_LOADER_H

#include <dlfcn.h>
#include <stddef.h>

#include "core/libc_compat.h"
#include "platform/got.h"

/* libc's functions, read from libc's own symbol table at the first call of
 * loader_ready(); the dlsym/dlopen stubs (reach_stubs_<arch>.c) branch to
 * them. loader_dlsym_next is stored last: set, all are. */
typedef void *(*loader_dlsym_fn)(void *, const char *);
typedef void *(*loader_dlvsym_fn)(void *, const char *, const char *);
typedef void *(*loader_dlopen_fn)(const char *, int);
typedef void *(*loader_dlmopen_fn)(Lmid_t, const char *, int);
extern loader_dlsym_fn loader_dlsym_next __attribute__((visibility("hidden")));
extern loader_dlvsym_fn loader_dlvsym_next __attribute__((visibility("hidden")));
extern loader_dlopen_fn loader_dlopen_next __attribute__((visibility("hidden")));
extern loader_dlmopen_fn loader_dlmopen_next __attribute__((visibility("hidden")));

/* 1 once libc's four functions are known (always, with glibc). Allocates
 * nothing and calls no libc string function. */
int loader_ready(void);

/* liblastcall.so's own dynamic section, or NULL before loader_ready() has
 * found it. */
const struct lc_dso *loader_self(void);

/* libc's dlsym and dlvsym: our lookups of real functions must not get our
 * hooks back, and dlsym(RTLD_NEXT) must be called from inside the shim to mean
 * "after lastcall". libc's dlopen, for our own RTLD_NOLOAD lookups: our
 * exported dlopen would count them as the program's loads (see reach.c,
 * load_epoch). NULL when loader_ready() is 0 (never in practice). */
void *loader_dlsym(void *handle, const char *name);
void *loader_dlvsym(void *handle, const char *name, const char *version);
void *loader_dlopen(const char *file, int mode);

/* How many loaded objects other than the program and lastcall define both
 * DEFINES1 and DEFINES2 (how symbols.c recognises a library, whatever its
 * file name); the first one's file name in FIRST, the second's in SECOND (CAP
 * bytes each). Done here, in code no sanitizer instruments: the names are the
 * loader's, written by the thread that loaded each object under a lock
 * ThreadSanitizer does not see. */
int loader_find_copies(const char *defines1, const char *defines2, char *first, char *second,
                       size_t cap);

#endif
