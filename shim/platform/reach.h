/* Reach: connections made by code that does not bind to libpq/hiredis
 * through the global scope, where LD_PRELOAD puts our hooks first:
 * - dlsym/dlvsym lookups (ctypes, any FFI) of a hooked function on a handle of
 *   the library that defines it get our hook;
 * - libraries loaded with RTLD_DEEPBIND (PHP extensions) have their GOT
 *   entries for hooked functions pointed at our hooks, at the first dlsym
 *   after a dlopen (our dlopen/dlmopen stubs note the load).
 * See DESIGN.md, "Reach". */
#ifndef LC_REACH_H
#define LC_REACH_H

#include <stddef.h>

#include "platform/symbols.h"

/* libc's own dlsym/dlvsym: our lookups of real functions must not get our
 * hooks back, and dlsym(RTLD_NEXT) must be called from inside the shim to
 * mean "after lastcall". NULL only if libc has none (never in practice). */
void *reach_real_dlsym(void *handle, const char *name);
void *reach_real_dlvsym(void *handle, const char *name, const char *version);
/* libc's dlopen, for our own RTLD_NOLOAD lookups: our exported dlopen would
 * count them as the program's loads (see reach.c, load_epoch). */
void *reach_real_dlopen(const char *file, int mode);

/* How many copies of LIB (recognised by what they define, see symbols.h)
 * are loaded; the first one's file name in FIRST, the second's in SECOND
 * (CAP bytes each). Done here, in code no sanitizer instruments: the names
 * are the loader's, written by the thread that loaded each object under a
 * lock ThreadSanitizer does not see. */
int reach_find_copies(enum lc_lib lib, char *first, char *second, size_t cap);

/* Points the GOT entries of objects loaded since the last call at our hooks
 * where they bind straight to the real function (see reach.c). Cheap when
 * nothing was loaded. */
void reach_scan(void);

#endif
