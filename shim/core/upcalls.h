/* What a lower layer asks of the layers above it. The composition root
 * (runtime/) defines the one table, statically initialised: a hook may run
 * before our constructor (another library's constructor calls PQconnectdb),
 * and must find it filled in then too. Lower layers know only this type. */
#ifndef LC_UPCALLS_H
#define LC_UPCALLS_H

#include <stdint.h>

struct lc_entry;

struct lc_upcalls {
    /* The run-once init of the whole library (lc_active's slow path). */
    void (*init)(void);
    /* After every tracked connect: this process's drain machinery and its
     * exit drain (after OpenSSL's atexit when USES_SSL). */
    void (*on_connect)(int uses_ssl);
    /* The program frees HANDLE (PQfinish, redisFree...): waits while the
     * drain owns it, takes it out of the registry, runs DO_FREE (the real
     * free, nested calls not counted) and logs the close. Returns DO_FREE's
     * result; *tracked says whether HANDLE was tracked, *info then describes
     * it (its cancel object is the caller's to free). */
    int (*free_tracked)(void *handle, int (*do_free)(void *), struct lc_entry *info,
                        int *tracked);
    /* A connect under way when the gate closed returned HANDLE: close it the
     * way the drain would, at once. */
    void (*close_late)(void *handle);
    /* The program used HANDLE (LASTCALL_LEAK_AGE): it is not idle. */
    void (*touch)(void *handle);
    /* The program is about to create a thread of its own. */
    void (*on_program_thread)(void);
    /* A connection of KIND was opened: the leak threshold check. */
    void (*opened)(int kind);
    /* The kernel deadline timer's signal during an exit drain (0: none): a
     * helper thread made without pthread_attr_setsigmask_np (glibc 2.31)
     * leaves it open to its creator (platform/glibc_compat.h). */
    int (*deadline_signal)(void);
};

extern const struct lc_upcalls lc_up;

#endif
