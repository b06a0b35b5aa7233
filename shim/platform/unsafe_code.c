/* See unsafe_code.h. */
#define _GNU_SOURCE
#include "platform/unsafe_code.h"

#include <link.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>

#include "platform/got.h"

#define MAX_RANGES 24
static struct code_range ranges[MAX_RANGES];
static int n_ranges;

static int object_holds(const struct dl_phdr_info *info, uintptr_t addr)
{
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && addr >= lo && addr < lo + ph->p_memsz)
            return 1;
    }
    return 0;
}

/* Which objects' code is unsafe to leave, judged by what each defines in its
 * own dynamic symbol table, never by comparing addresses: a non-PIE
 * executable that takes malloc's address (Debian's python3.11) holds the
 * canonical PLT entry of malloc, so &malloc lies inside the executable, whose
 * own code is the program's (issue 19, case 5). An object that defines malloc
 * (libc, a preloaded jemalloc, a sanitizer runtime, an executable linked with
 * its own allocator) is unsafe; so are libc, the loader (AT_BASE) and lastcall. */
enum { NOT_UNSAFE = -1, UNSAFE = 0, UNSAFE_LIBC = 1 };

static int is_loader(const struct dl_phdr_info *info)
{
    return info->dlpi_addr != 0 && info->dlpi_addr == (ElfW(Addr))getauxval(AT_BASE);
}

static int classify(const struct dl_phdr_info *info)
{
    if (is_loader(info) || object_holds(info, (uintptr_t)&unsafe_code_collect))
        return UNSAFE;
    struct lc_dso d;
    if (dso_parse(info, &d) != 0)
        return NOT_UNSAFE; /* no dynamic section: nothing of libc's or the allocator's */
    if (dso_defines(&d, "gnu_get_libc_version"))
        return UNSAFE_LIBC;
    if (dso_defines(&d, "malloc") || dso_defines(&d, "__libc_malloc"))
        return UNSAFE;
    return NOT_UNSAFE;
}

static int collect(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    if (info->dlpi_name && strstr(info->dlpi_name, "vgpreload_"))
        *(int *)data = 1;
    int kind = classify(info);
    if (kind == NOT_UNSAFE)
        return 0;
    for (int i = 0; i < info->dlpi_phnum && n_ranges < MAX_RANGES; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
            continue;
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
        ranges[n_ranges++] = (struct code_range){lo, lo + ph->p_memsz, kind == UNSAFE_LIBC};
    }
    return 0;
}

int unsafe_code_collect(int *under_valgrind)
{
    n_ranges = 0;
    dl_iterate_phdr(collect, under_valgrind);
    return n_ranges > 0;
}

const struct code_range *unsafe_code_at(uintptr_t pc)
{
    for (int i = 0; i < n_ranges; i++)
        if (pc >= ranges[i].lo && pc < ranges[i].hi)
            return &ranges[i];
    return NULL;
}

/* The system calls a thread may sleep in while libc holds nothing that
 * pthread_create or malloc need: reads, writes and waits. Not clone/fork
 * (fork holds every malloc arena lock across it), not futex, not what malloc
 * calls (mmap, munmap, brk, mprotect, madvise). */
int syscall_is_blocking(long nr)
{
    switch (nr) {
#ifdef SYS_poll /* x86-64 has these; aarch64 has only the p- and epoll_p- forms */
    case SYS_poll: case SYS_select: case SYS_pause: case SYS_epoll_wait:
#endif
    case SYS_read: case SYS_write: case SYS_pread64: case SYS_pwrite64: case SYS_readv:
    case SYS_writev: case SYS_nanosleep:
    case SYS_connect: case SYS_accept: case SYS_sendto: case SYS_recvfrom: case SYS_sendmsg:
    case SYS_recvmsg: case SYS_wait4: case SYS_msgsnd: case SYS_msgrcv: case SYS_flock:
    case SYS_rt_sigtimedwait: case SYS_rt_sigsuspend: case SYS_clock_nanosleep:
    case SYS_waitid: case SYS_pselect6: case SYS_ppoll:
    case SYS_epoll_pwait: case SYS_accept4: case SYS_recvmmsg: case SYS_sendmmsg:
    case SYS_restart_syscall:
        return 1;
    default:
        return 0;
    }
}

/* Quick calls that leave libc holding nothing once they return. */
int syscall_is_quick(long nr)
{
    switch (nr) {
    case SYS_kill: case SYS_tkill: case SYS_tgkill: case SYS_rt_sigprocmask:
    case SYS_rt_sigqueueinfo: case SYS_rt_tgsigqueueinfo: case SYS_getpid: case SYS_gettid:
    case SYS_close: case SYS_fcntl: case SYS_ioctl: case SYS_lseek: case SYS_fstat:
    case SYS_newfstatat: case SYS_fsync: case SYS_fdatasync:
        return 1;
    default:
        return syscall_is_blocking(nr);
    }
}
