/* The exported dlsym, dlvsym, dlopen and dlmopen for aarch64: assembly stubs
 * that keep the caller's return address (see reach.c for why, and
 * reach_stubs_x86_64.c for the same on x86-64).
 *
 * glibc's dlsym and dlopen read their caller from the link register (x30) at
 * entry. Each stub saves x29/x30 and its arguments in a 48-byte frame, calls
 * reach_dlsym_pre (or reach_dlopen_pre), and unless that answered, restores
 * the arguments and x30 and branches to libc's function through x16: libc then
 * sees the program's return address in x30, exactly as without lastcall, and
 * returns straight to the program. x16 (IP0) is free to clobber at a call
 * boundary, and a BR through x16 may land on a "bti c" landing pad. Each stub
 * begins with "hint #34" (bti c; a no-op without BTI) for callers that branch
 * here indirectly (every caller through a PLT or a GOT pointer). */
#include "core/arch.h"

#if defined(__aarch64__) && LC_ARCH_DL_STUBS
/* Frame (48 bytes, sp stays 16-byte aligned):
 *   [sp+0]  x29, [sp+8] x30
 *   [sp+16] x0,  [sp+24] x1
 *   [sp+32] x2 (dlvsym, dlmopen), [sp+40] result (dlvsym);
 *   dlsym keeps its result at [sp+32]. */
#define LC_STUB_PROLOGUE                                                                       \
    "  hint #34\n"                                                                             \
    "  stp x29, x30, [sp, #-48]!\n"                                                            \
    ".cfi_def_cfa_offset 48\n"                                                                 \
    ".cfi_offset x29, -48\n"                                                                   \
    ".cfi_offset x30, -40\n"                                                                   \
    "  mov x29, sp\n"
#define LC_STUB_EPILOGUE                                                                       \
    "  ldp x29, x30, [sp], #48\n"                                                              \
    ".cfi_def_cfa_offset 0\n"                                                                  \
    ".cfi_restore x29\n"                                                                       \
    ".cfi_restore x30\n"
/* A tail branch to libc's function, read from a hidden pointer of loader.c. */
#define LC_STUB_TAIL(ptr)                                                                      \
    "  adrp x16, " ptr "\n"                                                                    \
    "  ldr x16, [x16, #:lo12:" ptr "]\n"                                                       \
    "  br x16\n"

__asm__(".text\n"
        /* dlsym(handle, name): reach_dlsym_pre(handle, name, NULL, &result). */
        ".globl dlsym\n"
        ".type dlsym, %function\n"
        ".p2align 2\n"
        "dlsym:\n"
        ".cfi_startproc\n"
        LC_STUB_PROLOGUE
        "  stp x0, x1, [sp, #16]\n"
        "  mov x2, xzr\n"
        "  add x3, sp, #32\n"
        "  bl reach_dlsym_pre\n"
        "  cbnz w0, 1f\n"
        "  ldp x0, x1, [sp, #16]\n"
        ".cfi_remember_state\n"
        LC_STUB_EPILOGUE
        LC_STUB_TAIL("loader_dlsym_next")
        "1:\n"
        ".cfi_restore_state\n"
        "  ldr x0, [sp, #32]\n"
        LC_STUB_EPILOGUE
        "  ret\n"
        ".cfi_endproc\n"
        ".size dlsym, .-dlsym\n"
        /* dlvsym(handle, name, version): reach_dlsym_pre(handle, name,
         * version, &result). */
        ".globl dlvsym\n"
        ".type dlvsym, %function\n"
        ".p2align 2\n"
        "dlvsym:\n"
        ".cfi_startproc\n"
        LC_STUB_PROLOGUE
        "  stp x0, x1, [sp, #16]\n"
        "  str x2, [sp, #32]\n"
        "  add x3, sp, #40\n"
        "  bl reach_dlsym_pre\n"
        "  cbnz w0, 1f\n"
        "  ldp x0, x1, [sp, #16]\n"
        "  ldr x2, [sp, #32]\n"
        ".cfi_remember_state\n"
        LC_STUB_EPILOGUE
        LC_STUB_TAIL("loader_dlvsym_next")
        "1:\n"
        ".cfi_restore_state\n"
        "  ldr x0, [sp, #40]\n"
        LC_STUB_EPILOGUE
        "  ret\n"
        ".cfi_endproc\n"
        ".size dlvsym, .-dlvsym\n"
        /* dlopen(file, mode): reach_dlopen_pre() notes a load under way, then
         * the tail branch; NULL when libc's dlopen cannot be found. */
        ".globl dlopen\n"
        ".type dlopen, %function\n"
        ".p2align 2\n"
        "dlopen:\n"
        ".cfi_startproc\n"
        LC_STUB_PROLOGUE
        "  stp x0, x1, [sp, #16]\n"
        "  bl reach_dlopen_pre\n"
        "  cbz w0, 1f\n"
        "  ldp x0, x1, [sp, #16]\n"
        ".cfi_remember_state\n"
        LC_STUB_EPILOGUE
        LC_STUB_TAIL("loader_dlopen_next")
        "1:\n"
        ".cfi_restore_state\n"
        "  mov x0, xzr\n"
        LC_STUB_EPILOGUE
        "  ret\n"
        ".cfi_endproc\n"
        ".size dlopen, .-dlopen\n"
        /* dlmopen(lmid, file, mode): the same with three arguments. */
        ".globl dlmopen\n"
        ".type dlmopen, %function\n"
        ".p2align 2\n"
        "dlmopen:\n"
        ".cfi_startproc\n"
        LC_STUB_PROLOGUE
        "  stp x0, x1, [sp, #16]\n"
        "  str x2, [sp, #32]\n"
        "  bl reach_dlopen_pre\n"
        "  cbz w0, 1f\n"
        "  ldp x0, x1, [sp, #16]\n"
        "  ldr x2, [sp, #32]\n"
        ".cfi_remember_state\n"
        LC_STUB_EPILOGUE
        LC_STUB_TAIL("loader_dlmopen_next")
        "1:\n"
        ".cfi_restore_state\n"
        "  mov x0, xzr\n"
        LC_STUB_EPILOGUE
        "  ret\n"
        ".cfi_endproc\n"
        ".size dlmopen, .-dlmopen\n");
#else
/* ISO C wants a translation unit to declare something. */
typedef int lc_reach_stubs_aarch64_unused;
#endif
