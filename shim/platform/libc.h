/* What differs between C libraries, for the rest of the shim. */
#ifndef LC_LIBC_H
#define LC_LIBC_H

#include <pthread.h>

#ifdef __GLIBC__
/* What pthread_atfork calls. pthread_atfork itself comes from
 * libc_nonshared.a, linked at the far end of our code: calling it from a
 * constructor faulted in one more 64 KiB window of it in every process. */
extern int __register_atfork(void (*prepare)(void), void (*parent)(void), void (*child)(void),
                             void *dso_handle);
extern void *__dso_handle;
static inline int lc_register_atfork(void (*prepare)(void), void (*parent)(void),
                                     void (*child)(void))
{
    return __register_atfork(prepare, parent, child, __dso_handle);
}
#else
static inline int lc_register_atfork(void (*prepare)(void), void (*parent)(void),
                                     void (*child)(void))
{
    return pthread_atfork(prepare, parent, child);
}
#endif

#endif
