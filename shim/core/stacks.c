#define _GNU_SOURCE
#include "core/stacks.h"
#include "core/libc_compat.h"

#include <dlfcn.h>
#include <errno.h>
#ifdef __GLIBC__
#include <execinfo.h>
#endif
#include <fcntl.h>
#include <link.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/clock.h"

/* Frames of our own hooks, skipped before max_depth counts. */
#define LC_STACK_SLACK 8

extern char **environ;

/* Our own code's address range, found once: a compare per frame instead of
 * a dladdr (which walks the loaded objects). */
static uintptr_t own_start, own_end;

static int find_own_range(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    (void)data;
    uintptr_t self = (uintptr_t)&stack_capture;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
            continue;
        uintptr_t start = info->dlpi_addr + ph->p_vaddr;
        if (self >= start && self < start + ph->p_memsz) {
            own_start = start;
            own_end = start + ph->p_memsz;
            return 1;
        }
    }
    return 0;
}

static int own_module(const void *addr)
{
    if (own_end == 0)
        dl_iterate_phdr(find_own_range, NULL);
    return (uintptr_t)addr >= own_start && (uintptr_t)addr < own_end;
}

struct lc_stack *stack_capture(int max_depth)
{
    void *raw[LC_STACK_SLACK + 64];
    if (max_depth > 64)
        max_depth = 64;
    int n = backtrace(raw, max_depth + LC_STACK_SLACK);
    /* Start after the first run of our own frames (capture, track, hook).
     * Frames before that run belong to an interceptor (a sanitizer wraps
     * backtrace itself). */
    int first = 0;
    while (first < n && first < LC_STACK_SLACK && !own_module(raw[first]))
        first++;
    if (first == n || first == LC_STACK_SLACK)
        first = 0;
    while (first < n && own_module(raw[first]))
        first++;
    /* Our frames further down (the pthread_create trampoline) are dropped too. */
    void *kept[LC_STACK_SLACK + 64];
    int depth = 0;
    for (int i = first; i < n && depth < max_depth; i++)
        if (!own_module(raw[i]))
            kept[depth++] = raw[i];
    struct lc_stack *s = malloc(sizeof *s + (size_t)depth * sizeof(void *));
    if (s == NULL)
        return NULL;
    s->depth = depth;
    memcpy(s->frames, kept, (size_t)depth * sizeof(void *));
    return s;
}

int stack_equal(const struct lc_stack *a, const struct lc_stack *b)
{
    if (a == b)
        return 1;
    if (a == NULL || b == NULL || a->depth != b->depth)
        return 0;
    return memcmp(a->frames, b->frames, (size_t)a->depth * sizeof(void *)) == 0;
}

/* Runs addr2line for one module's addresses; fills function/file/line.
 * Bounded: at most 3 s, then it is killed and what it said so far is kept. */
static void addr2line(const char *module, struct lc_frame **frames, int n)
{
    char *argv[8 + 64];
    char addrs[64][24];
    int a = 0;
    argv[a++] = "addr2line";
    argv[a++] = "-f";
    argv[a++] = "-C";
    argv[a++] = "-e";
    argv[a++] = (char *)module;
    for (int i = 0; i < n && i < 64; i++) {
        /* A return address points after the call: ask about the call itself. */
        snprintf(addrs[i], sizeof addrs[i], "0x%lx",
                 (unsigned long)(frames[i]->offset ? frames[i]->offset - 1 : 0));
        argv[a++] = addrs[i];
    }
    argv[a] = NULL;

    /* Our own library has no business inside addr2line. */
    size_t env_n = 0;
    while (environ && environ[env_n])
        env_n++;
    char **env = calloc(env_n + 1, sizeof *env);
    if (env == NULL)
        return;
    size_t k = 0;
    for (size_t i = 0; i < env_n; i++)
        if (strncmp(environ[i], "LD_PRELOAD=", 11) != 0)
            env[k++] = environ[i];

    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) {
        free(env);
        return;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid;
    int rc = posix_spawnp(&pid, "addr2line", &fa, &attr, argv, env);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    free(env);
    close(out[1]);
    if (rc != 0) {
        close(out[0]);
        return;
    }
    char buf[32768];
    size_t len = 0;
    int64_t until = lc_now_ms() + 3000;
    for (;;) {
        int64_t left = until - lc_now_ms();
        if (left <= 0 || len + 1 >= sizeof buf)
            break;
        struct pollfd p = {.fd = out[0], .events = POLLIN};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        ssize_t got = read(out[0], buf + len, sizeof buf - 1 - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        len += (size_t)got;
    }
    buf[len] = '\0';
    close(out[0]);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);

    /* Two lines per address: function, then file:line. */
    char *save = NULL;
    char *line = strtok_r(buf, "\n", &save);
    for (int i = 0; i < n && line; i++) {
        char *fileline = strtok_r(NULL, "\n", &save);
        if (strcmp(line, "??") != 0)
            snprintf(frames[i]->function, sizeof frames[i]->function, "%s", line);
        if (fileline && strncmp(fileline, "??", 2) != 0) {
            char *colon = strrchr(fileline, ':');
            if (colon) {
                *colon = '\0';
                int ln = atoi(colon + 1); /* "42 (discriminator 1)" reads as 42 */
                if (ln > 0) {
                    snprintf(frames[i]->file, sizeof frames[i]->file, "%s", fileline);
                    frames[i]->line = ln;
                }
            }
        }
        line = strtok_r(NULL, "\n", &save);
    }
}

void stack_symbolize(const struct lc_stack *stack, struct lc_frame *out)
{
    int n = stack ? stack->depth : 0;
    char exe[256] = "";
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[el > 0 ? el : 0] = '\0';
    for (int i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof out[i]);
        Dl_info info;
        struct link_map *lm = NULL;
        if (dladdr1(stack->frames[i], &info, (void **)&lm, RTLD_DL_LINKMAP) && lm) {
            const char *name = lm->l_name && *lm->l_name ? lm->l_name : exe;
            snprintf(out[i].module, sizeof out[i].module, "%s", name);
            /* l_addr is the load bias: 0 for a non-PIE executable, whose
             * addresses are already what addr2line wants. */
            out[i].offset = (uintptr_t)stack->frames[i] - (uintptr_t)lm->l_addr;
            if (info.dli_sname)
                snprintf(out[i].function, sizeof out[i].function, "%s", info.dli_sname);
        } else {
            snprintf(out[i].module, sizeof out[i].module, "?");
            out[i].offset = (uintptr_t)stack->frames[i];
        }
    }
    /* One addr2line per module. */
    int asked[64] = {0};
    for (int i = 0; i < n && i < 64; i++) {
        if (asked[i] || out[i].module[0] == '?')
            continue;
        struct lc_frame *group[64];
        int g = 0;
        for (int j = i; j < n && j < 64; j++) {
            if (!asked[j] && strcmp(out[j].module, out[i].module) == 0) {
                asked[j] = 1;
                group[g++] = &out[j];
            }
        }
        addr2line(out[i].module, group, g);
    }
}

void stack_format_frame(const struct lc_frame *f, int index, char *buf, size_t size)
{
    const char *base = strrchr(f->module, '/');
    base = base ? base + 1 : f->module;
    if (f->file[0] && f->line > 0)
        snprintf(buf, size, "#%d %s %s:%d (%s+0x%lx)", index, f->function[0] ? f->function : "??",
                 f->file, f->line, base, (unsigned long)f->offset);
    else if (f->function[0])
        snprintf(buf, size, "#%d %s (%s+0x%lx)", index, f->function, base,
                 (unsigned long)f->offset);
    else
        snprintf(buf, size, "#%d %s+0x%lx", index, f->module, (unsigned long)f->offset);
}
