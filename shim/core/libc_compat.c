/* Stand-ins for the glibc functions the shim uses, for other C libraries
 * (musl): dladdr1, backtrace. See libc_compat.h; the ones
 * that need the loader's real functions are in platform/libc_compat_dl.c.
 * Built only there: with glibc this file is empty. */
#define _GNU_SOURCE
#include "core/libc_compat.h"

#ifndef __GLIBC__

#include <link.h>
#include <pthread.h>
#include <stdint.h>

/* ---- dladdr1 ---- */

struct find_object {
    uintptr_t addr;
    int index;
    int found;
    struct link_map map;
};

static int find_object_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct find_object *f = data;
    int index = f->index++;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        uintptr_t start = info->dlpi_addr + ph->p_vaddr;
        if (f->addr < start || f->addr >= start + ph->p_memsz)
            continue;
        f->map.l_addr = info->dlpi_addr;
        /* The first object listed is the program: glibc names it "". */
        f->map.l_name = (char *)(index == 0 || info->dlpi_name == NULL ? "" : info->dlpi_name);
        f->map.l_ld = NULL;
        for (int j = 0; j < info->dlpi_phnum; j++)
            if (info->dlpi_phdr[j].p_type == PT_DYNAMIC)
                f->map.l_ld = (ElfW(Dyn) *)(info->dlpi_addr + info->dlpi_phdr[j].p_vaddr);
        f->map.l_next = f->map.l_prev = NULL;
        f->found = 1;
        return 1;
    }
    return 0;
}

static __thread struct link_map found_map;

int lc_dladdr1(const void *addr, Dl_info *info, void **extra, int flags)
{
    int ok = dladdr(addr, info);
    if (flags != RTLD_DL_LINKMAP || extra == NULL)
        return ok;
    struct find_object f = {.addr = (uintptr_t)addr};
    dl_iterate_phdr(find_object_cb, &f);
    if (!f.found) {
        *extra = NULL;
        return 0;
    }
    found_map = f.map;
    *extra = &found_map;
    return 1;
}

/* ---- backtrace ---- */

/* Walks the saved frame pointers from our own frame: each frame holds the
 * caller's frame pointer, then the return address. A frame of code built
 * without frame pointers ends the walk early or adds a stray address; every
 * address read is checked to lie inside this thread's stack first. */
__attribute__((noinline)) int lc_backtrace(void **buffer, int size)
{
    uintptr_t fp = (uintptr_t)__builtin_frame_address(0);
    uintptr_t lo = fp, hi = 0;
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        void *stack_lo;
        size_t stack_size;
        if (pthread_attr_getstack(&attr, &stack_lo, &stack_size) == 0)
            hi = (uintptr_t)stack_lo + stack_size;
        pthread_attr_destroy(&attr);
    }
    int n = 0;
    while (n < size && fp >= lo && fp + 2 * sizeof(void *) <= hi &&
           (fp & (sizeof(void *) - 1)) == 0) {
        const uintptr_t *frame = (const uintptr_t *)fp;
        if (frame[1] == 0)
            break;
        buffer[n++] = (void *)frame[1];
        if (frame[0] <= fp)
            break;
        fp = frame[0];
    }
    return n;
}

#endif /* !__GLIBC__ */
