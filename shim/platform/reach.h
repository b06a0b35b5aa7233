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

/* libc's own dlsym/dlvsym/dlopen and the search for loaded copies of a
 * library, which this file's earlier versions held, are in loader.h (used by
 * symbols.c, which reach.c uses: no circle). */

/* Points the GOT entries of objects loaded since the last call at our hooks
 * where they bind straight to the real function (see reach.c). Cheap when
 * nothing was loaded. */
void reach_scan(void);

#endif
