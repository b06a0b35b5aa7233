#define _GNU_SOURCE
#include "platform/safepoint.h"

#include "platform/got.h"
#include "platform/loader_locks.h"
#include "platform/unsafe_code.h"

#include <errno.h>
#include <stddef.h>
#ifdef __GLIBC__
#include <gnu/libc-version.h>
#endif
#include <link.h>
#include <pthread.h>
#include <sys/auxv.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#if defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__)

/* Under valgrind the signal frame counts as gone once the handler returned;
 * the way back writes into it, so memcheck is told it is still there. The
 * header's client requests are a few no-op instructions outside valgrind. */
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define FRAME_IS_MEMORY(p, n) VALGRIND_MAKE_MEM_DEFINED((p), (n))
#else
#define FRAME_IS_MEMORY(p, n) ((void)(p), (void)(n))
#endif

extern int __sigaction(int sig, const struct sigaction *act, struct sigaction *oldact);
extern void *__libc_stack_end;

static int prepared;       /* 1: diversion possible, -1: not here */
static int under_valgrind; /* it would see the frame scan read undefined stack */
static uintptr_t glibc_restorer; /* what glibc puts in every signal frame it arranges */

/* The diverted thread runs on a stack of its own, mapped once (untouched
 * until a drain, so it costs no resident memory): the interrupted stack may
 * be a small one (a coroutine's), the signal frame above it must stay intact
 * for the way back, and a tool that tracks the stack pointer (valgrind)
 * takes the switch for what it is. */
#define LANDING_STACK (128 * 1024)
static char *landing_stack; /* its lowest page is a guard */


int safepoint_prepare(void)
{
    int state = __atomic_load_n(&prepared, __ATOMIC_ACQUIRE);
    if (state)
        return state > 0;
    int have_ranges = unsafe_code_collect(&under_valgrind);
    /* Without the loader's locks a constructor cannot be told from the
     * program's code: no diversion (the drain thread starts at the first
     * connect, as on other platforms). */
    int loader_known = loader_locks_measure();
    for (int sig = 1; sig < NSIG && glibc_restorer == 0; sig++) {
        struct sigaction k;
        if (__sigaction(sig, NULL, &k) == 0 && (k.sa_flags & 0x04000000 /* SA_RESTORER */))
            glibc_restorer = (uintptr_t)k.sa_restorer;
    }
    if (landing_stack == NULL) {
        void *m = mmap(NULL, LANDING_STACK, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
        if (m != MAP_FAILED) {
            mprotect(m, 4096, PROT_NONE);
            landing_stack = m;
        }
    }
    /* With a CET shadow stack the way back through the preserved frame
     * would not find the restore token the kernel checks: no diversion. */
    unsigned long shstk = 0;
    int shadow = syscall(SYS_arch_prctl, 0x5005 /* ARCH_SHSTK_STATUS */, &shstk) == 0 && (shstk & 1);
    state = have_ranges && loader_known && glibc_restorer != 0 && landing_stack != NULL && !shadow ? 1 : -1;
    __atomic_store_n(&prepared, state, __ATOMIC_RELEASE);
    return state > 0;
}

/* In libc, a thread is at a safe point only at a system call: just after the
 * syscall instruction with -EINTR (interrupted while blocked), or at it to be
 * restarted (the kernel rewound the instruction pointer and put the number
 * back), or just after one of the calls above, when the wrapper's
 * `mov $NR, %eax; syscall` says which it was; or just after any system call
 * when this very thread sent itself the signal (raise(), kill(getpid())):
 * the signal arrives as the send or a mask change returns, and lastcall
 * diverts only single-threaded processes. */
static int at_call(const struct code_range *r, uintptr_t pc, long rax, const siginfo_t *info)
{
    if (pc + 2 <= r->hi && *(const uint16_t *)pc == 0x050f && syscall_is_blocking(rax))
        return 1;
    if (pc < r->lo + 2 || *(const uint16_t *)(pc - 2) != 0x050f)
        return 0;
    if (rax == -EINTR)
        return 1;
    if (pc >= r->lo + 7 && *(const uint8_t *)(pc - 7) == 0xb8 &&
        syscall_is_quick((long)*(const int32_t *)(pc - 6)))
        return 1;
    /* Self-sent: every call that sends or unblocks a signal returns 0. A
     * non-zero return (mmap's address, read's count) is the return of some
     * other call to which the signal came back through rt_sigreturn, once a
     * handler that had it blocked returned: libc may hold anything there. */
    return rax == 0 && info && info->si_pid == getpid() &&
           (info->si_code == SI_USER || info->si_code == SI_TKILL || info->si_code == SI_QUEUE);
}

/* Where the interrupted code itself is: outside every unsafe object, or at a
 * system call in libc. */
static int pc_is_safe(const ucontext_t *uc, const siginfo_t *info)
{
    uintptr_t pc = (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
    long rax = (long)uc->uc_mcontext.gregs[REG_RAX];
    const struct code_range *r = unsafe_code_at(pc);
    return r == NULL || (r->libc && at_call(r, pc, rax, info));
}

static int outer_frames_safe(const ucontext_t *uc);

/* ---- diverting the interrupted thread ---- */

static struct {
    ucontext_t *uc;
    greg_t gregs[NGREG];
    uint64_t mask; /* the kernel's 64-bit mask, the first word of uc_sigmask */
    void (*fn)(void);
} diverted;
static int divert_busy;

static void copy_bytes(void *to, const void *from, size_t n)
{
    /* Not memcpy: a sanitizer's interceptor is no place for a signal handler. */
    for (size_t i = 0; i < n; i++)
        ((char *)to)[i] = ((const char *)from)[i];
}

static void landing(void)
{
    diverted.fn();
    ucontext_t *uc = diverted.uc;
    FRAME_IS_MEMORY(uc->uc_mcontext.gregs, sizeof diverted.gregs);
    FRAME_IS_MEMORY(&uc->uc_sigmask, sizeof diverted.mask);
    copy_bytes(uc->uc_mcontext.gregs, diverted.gregs, sizeof diverted.gregs);
    copy_bytes(&uc->uc_sigmask, &diverted.mask, sizeof diverted.mask);
    __atomic_store_n(&divert_busy, 0, __ATOMIC_RELEASE);
    /* rt_sigreturn reads its frame just below the stack pointer: the signal
     * frame, FPU state included, is as the kernel left it but for what we
     * put back. */
    __asm__ volatile("mov %0, %%rsp\n\t"
                     "mov $15, %%eax\n\t"
                     "syscall\n\t"
                     "ud2"
                     :
                     : "r"(uc)
                     : "memory");
    __builtin_unreachable();
}

int safepoint_divert(void *uctx, void (*fn)(void))
{
    if (landing_stack == NULL)
        return -1;
    int idle = 0;
    if (!__atomic_compare_exchange_n(&divert_busy, &idle, 1, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return -1;
    ucontext_t *uc = uctx;
    greg_t *g = uc->uc_mcontext.gregs;
    diverted.uc = uc;
    diverted.fn = fn;
    copy_bytes(diverted.gregs, g, sizeof diverted.gregs);
    /* Only the first 64 bits are the kernel's mask: past them lies the
     * frame's siginfo. */
    copy_bytes(&diverted.mask, &uc->uc_sigmask, sizeof diverted.mask);
    uintptr_t sp = (((uintptr_t)landing_stack + LANDING_STACK) & ~(uintptr_t)15) - sizeof(void *);
    *(uintptr_t *)sp = 0; /* a return address that ends every unwind */
    g[REG_RSP] = (greg_t)sp;
    g[REG_RIP] = (greg_t)(uintptr_t)landing;
    g[REG_EFL] &= ~(greg_t)0x400; /* the ABI wants the direction flag clear */
    uint64_t all = ~(uint64_t)0;
    const int faults[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGSYS};
    for (unsigned i = 0; i < sizeof faults / sizeof faults[0]; i++)
        all &= ~((uint64_t)1 << (faults[i] - 1));
    copy_bytes(&uc->uc_sigmask, &all, sizeof all);
    return 0;
}

int safepoint_pc_is_safe(const void *uctx, const siginfo_t *info)
{
    if (__atomic_load_n(&prepared, __ATOMIC_ACQUIRE) <= 0 || uctx == NULL)
        return 1; /* cannot tell */
    return pc_is_safe(uctx, info);
}

int safepoint_holds_loader_lock(void) { return loader_locks_held_by_self(); }

/* ---- exit() called from a signal handler ---- */

/* Is there a signal frame at A (A holds the return address into glibc's
 * restorer)? Its context says user code segment 0x33 and its FPU state lies
 * just above it with the kernel's magic. */
static int frame_at(uintptr_t a, uintptr_t top)
{
    const ucontext_t *uc = (const ucontext_t *)(a + sizeof(void *));
    if ((uintptr_t)(uc + 1) > top || (uc->uc_flags & ~7ul) != 0)
        return 0;
    if ((uc->uc_mcontext.gregs[REG_CSGSFS] & 0xffff) != 0x33)
        return 0;
    uintptr_t fp = (uintptr_t)uc->uc_mcontext.fpregs;
    if (fp <= a || fp - a > 65536 || fp + 468 > top)
        return 0;
    if (uc->uc_flags & 1 /* UC_FP_XSTATE */)
        return *(const uint32_t *)(fp + 464) == 0x46505853u; /* FP_XSTATE_MAGIC1 */
    return 1;
}

/* The stack that holds SP, as far as it can be bounded: the alternate signal
 * stack, or the main thread's (the only thread of a diverted process). 0
 * for any other (a coroutine's): its callers cannot be looked at. */
static uintptr_t stack_top(uintptr_t sp)
{
    stack_t ss;
    if (sigaltstack(NULL, &ss) == 0 && ss.ss_flags != SS_DISABLE &&
        sp >= (uintptr_t)ss.ss_sp && sp < (uintptr_t)ss.ss_sp + ss.ss_size)
        return (uintptr_t)ss.ss_sp + ss.ss_size;
    if (getpid() == (pid_t)syscall(SYS_gettid) && sp < (uintptr_t)__libc_stack_end &&
        (uintptr_t)__libc_stack_end - sp < ((uintptr_t)64 << 20))
        return (uintptr_t)__libc_stack_end;
    return 0;
}

static const siginfo_t *frame_info(uintptr_t uc)
{
    /* The kernel's frame: its ucontext ends with a 64-bit mask, the siginfo follows. */
    return (const siginfo_t *)(uc + offsetof(ucontext_t, uc_sigmask) + 8);
}

/* Is the signal frame at UC still live, i.e. a handler that is still
 * running? Its signal stays blocked until that handler returns (unless
 * SA_NODEFER), so it is in the mask of whatever that handler's code was
 * doing when the newer signal came (MASK). A stale frame from a handler that
 * returned (our own retries leave one each) does not pass. */
static int frame_is_live(uintptr_t uc, uint64_t mask)
{
    int sig = frame_info(uc)->si_signo;
    if (sig < 1 || sig > 64)
        return 0;
    if (mask & ((uint64_t)1 << (sig - 1)))
        return 1;
    struct sigaction k;
    return __sigaction(sig, NULL, &k) == 0 && (k.sa_flags & SA_NODEFER);
}

/* A handler is program code, but what it interrupted may be malloc: the
 * interrupted code's callers include every handler still running below it
 * on the stack, and each one's interrupted point must be safe too. */
static int outer_frames_safe(const ucontext_t *uc)
{
    if (under_valgrind)
        return 1; /* its frames are its own, and the scan reads undefined stack */
    uint64_t mask;
    copy_bytes(&mask, &uc->uc_sigmask, sizeof mask);
    uintptr_t sp = (uintptr_t)uc->uc_mcontext.gregs[REG_RSP] & ~(uintptr_t)7;
    for (int stacks = 0; stacks < 4; stacks++) {
        uintptr_t top = stack_top(sp), next_sp = 0;
        if (top == 0)
            return 1;
        for (uintptr_t a = sp; a + sizeof(void *) <= top; a += sizeof(void *)) {
            if (*(const uintptr_t *)a != glibc_restorer || !frame_at(a, top))
                continue;
            uintptr_t fuc = a + sizeof(void *);
            if (!frame_is_live(fuc, mask))
                continue;
            const ucontext_t *outer = (const ucontext_t *)fuc;
            if (!pc_is_safe(outer, frame_info(fuc)))
                return 0;
            copy_bytes(&mask, &outer->uc_sigmask, sizeof mask);
            uintptr_t osp = (uintptr_t)outer->uc_mcontext.gregs[REG_RSP];
            if (osp < sp || osp >= top)
                next_sp = osp & ~(uintptr_t)7; /* it ran on another stack (the alternate one) */
        }
        if (next_sp == 0)
            return 1;
        sp = next_sp;
    }
    return 1;
}

int safepoint_is_safe(const void *uctx, const siginfo_t *info)
{
    if (__atomic_load_n(&prepared, __ATOMIC_ACQUIRE) <= 0 || uctx == NULL)
        return 0;
    const ucontext_t *uc = uctx;
    /* In a single-threaded process (the only kind that is diverted) a held
     * loader lock is the interrupted thread's. */
    return pc_is_safe(uc, info) && !loader_locks_busy() && outer_frames_safe(uc);
}

int safepoint_exit_is_safe(void)
{
    if (__atomic_load_n(&prepared, __ATOMIC_ACQUIRE) <= 0 || under_valgrind)
        return 1;
    volatile uintptr_t here = 0;
    uintptr_t sp = (uintptr_t)&here & ~(uintptr_t)7;
    uintptr_t top = stack_top(sp);
    if (top == 0)
        return 1; /* a stack we cannot bound: take it as no handler */
    /* The innermost frame is the handler that called exit(). */
    for (uintptr_t a = sp; a + sizeof(void *) <= top; a += sizeof(void *))
        if (*(const uintptr_t *)a == glibc_restorer && frame_at(a, top)) {
            uintptr_t uc = a + sizeof(void *);
            return safepoint_is_safe((const void *)uc, frame_info(uc));
        }
    return 1;
}

#else /* not x86-64 Linux with glibc: no diversion (the drain thread starts at
       * the first connect), but a signal still never parks a thread that runs
       * a constructor, where the loader's locks are known (glibc), nor, on
       * aarch64, one inside libc, the loader, the allocator or lastcall (it
       * may hold a lock the drain needs: an arena's, reach.c's, got.c's) but
       * at a system call that holds nothing */

#if defined(__aarch64__) && defined(__linux__) && defined(__GLIBC__)
#define PC_CHECK 1
static int pc_state; /* 0: not collected, 1: being collected, 2: ready */
#else
#define PC_CHECK 0
#endif

int safepoint_prepare(void)
{
    loader_locks_measure();
#if PC_CHECK
    int none = 0, under_valgrind = 0;
    if (__atomic_compare_exchange_n(&pc_state, &none, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        __atomic_store_n(&pc_state, unsafe_code_collect(&under_valgrind) ? 2 : 1,
                         __ATOMIC_RELEASE);
#endif
    return 0;
}
int safepoint_is_safe(const void *uctx, const siginfo_t *info) { (void)uctx; (void)info; return 0; }
int safepoint_divert(void *uctx, void (*fn)(void)) { (void)uctx; (void)fn; return -1; }
int safepoint_exit_is_safe(void) { return 1; }
int safepoint_holds_loader_lock(void) { return loader_locks_held_by_self(); }

int safepoint_pc_is_safe(const void *uctx, const siginfo_t *info)
{
    (void)info;
#if PC_CHECK
    if (__atomic_load_n(&pc_state, __ATOMIC_ACQUIRE) != 2 || uctx == NULL)
        return 1; /* cannot tell */
    const ucontext_t *uc = uctx;
    uintptr_t pc = (uintptr_t)uc->uc_mcontext.pc;
    const struct code_range *r = unsafe_code_at(pc);
    if (r == NULL)
        return 1;
    if (!r->libc)
        return 0;
    /* In libc only at `svc #0`: rewound to it for a restart, or just after it
     * with -EINTR (interrupted while blocked) or after a quick call. The
     * kernel leaves x8, the call's number, as the wrapper set it. */
    const uint32_t svc = 0xd4000001;
    long nr = (long)uc->uc_mcontext.regs[8];
    if (pc + 4 <= r->hi && *(const uint32_t *)pc == svc && syscall_is_blocking(nr))
        return 1;
    if (pc < r->lo + 4 || *(const uint32_t *)(pc - 4) != svc)
        return 0;
    return (long)uc->uc_mcontext.regs[0] == -EINTR || syscall_is_quick(nr);
#else
    (void)uctx;
    return 1;
#endif
}

#endif
