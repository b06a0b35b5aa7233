/* Stand-ins for glibc's sigaction alias, dlvsym and dlmopen, for other C
 * libraries (musl): each reaches libc's own function through loader.c's
 * pointers to libc's dlsym and dlopen. See core/libc_compat.h. Built only
 * there: with glibc this file is empty. */
#define _GNU_SOURCE
#include "core/libc_compat.h"

#ifndef __GLIBC__

#include "platform/loader.h"

/* ---- sigaction ---- */

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
static sigaction_fn libc_sigaction;

/* dlsym(RTLD_NEXT) from inside lastcall: libc's, past our own export. The
 * first call is signals_install's, from our constructor, before any handler
 * of ours exists; later calls (also from handlers) only read the pointer. */
int lc_libc_sigaction(int sig, const struct sigaction *act, struct sigaction *oldact)
{
    sigaction_fn f = __atomic_load_n(&libc_sigaction, __ATOMIC_ACQUIRE);
    if (f == NULL) {
        f = (sigaction_fn)loader_dlsym(RTLD_NEXT, "sigaction");
        if (f == NULL)
            return -1;
        __atomic_store_n(&libc_sigaction, f, __ATOMIC_RELEASE);
    }
    return f(sig, act, oldact);
}

/* ---- dlvsym, dlmopen ---- */

void *lc_compat_dlvsym(void *handle, const char *name, const char *version)
{
    (void)version;
    return loader_dlsym(handle, name);
}

void *lc_compat_dlmopen(Lmid_t lmid, const char *file, int mode)
{
    if (lmid != LM_ID_BASE)
        return NULL;
    return loader_dlopen(file, mode);
}

#endif /* !__GLIBC__ */
