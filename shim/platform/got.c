#define _GNU_SOURCE
#include "platform/got.h"

#include <elf.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/arch.h"

/* Elsewhere (arch.h: LC_ARCH_GOT is 0) got_each finds no entry: no GOT is
 * rewritten, and the rest (symbol lookup, page protection) is portable. */
#if !LC_ARCH_GOT
#elif defined(__x86_64__)
#define LC_R_JUMP_SLOT R_X86_64_JUMP_SLOT
#define LC_R_GLOB_DAT R_X86_64_GLOB_DAT
#elif defined(__aarch64__)
#define LC_R_JUMP_SLOT R_AARCH64_JUMP_SLOT
#define LC_R_GLOB_DAT R_AARCH64_GLOB_DAT
#endif

/* glibc relocates most objects' dynamic entries in place, but not the vDSO's
 * (read-only): a value inside the mapping is already an address. */
static const void *dyn_ptr(const struct lc_dso *d, ElfW(Addr) v)
{
    if (v >= d->start && v < d->end)
        return (const void *)v;
    return (const void *)(d->base + v);
}

int dso_from_link_map(const struct link_map *lm, struct lc_dso *d)
{
    /* A shared object's first PT_LOAD maps its ELF header at the load base. */
    if (lm->l_addr == 0 || lm->l_name == NULL || lm->l_name[0] == '\0')
        return -1;
    const ElfW(Ehdr) *eh = (const ElfW(Ehdr) *)lm->l_addr;
    if (eh->e_ident[EI_MAG0] != ELFMAG0 || eh->e_ident[EI_MAG1] != ELFMAG1 ||
        eh->e_ident[EI_MAG2] != ELFMAG2 || eh->e_ident[EI_MAG3] != ELFMAG3)
        return -1;
    struct dl_phdr_info info = {
        .dlpi_addr = lm->l_addr,
        .dlpi_name = lm->l_name,
        .dlpi_phdr = (const ElfW(Phdr) *)(lm->l_addr + eh->e_phoff),
        .dlpi_phnum = eh->e_phnum,
    };
    return dso_parse(&info, d);
}

int dso_parse(const struct dl_phdr_info *info, struct lc_dso *d)
{
    *d = (struct lc_dso){0};
    d->base = info->dlpi_addr;
    d->name = info->dlpi_name ? info->dlpi_name : "";
    d->phdr = info->dlpi_phdr;
    d->phnum = info->dlpi_phnum;
    const ElfW(Dyn) *dyn = NULL;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (int i = 0; i < d->phnum; i++) {
        const ElfW(Phdr) *p = &d->phdr[i];
        uintptr_t s = d->base + p->p_vaddr, e = s + p->p_memsz;
        if (p->p_type == PT_LOAD) {
            if (s < lo)
                lo = s;
            if (e > hi)
                hi = e;
        } else if (p->p_type == PT_DYNAMIC) {
            dyn = (const ElfW(Dyn) *)s;
        }
    }
    if (dyn == NULL || lo >= hi)
        return -1;
    d->start = lo;
    d->end = hi;
    ElfW(Xword) pltrel = 0;
    for (; dyn->d_tag != DT_NULL; dyn++) {
        ElfW(Addr) v = dyn->d_un.d_ptr;
        switch (dyn->d_tag) {
        case DT_SYMTAB: d->symtab = dyn_ptr(d, v); break;
        case DT_STRTAB: d->strtab = dyn_ptr(d, v); break;
        case DT_STRSZ: d->strsz = dyn->d_un.d_val; break;
        case DT_GNU_HASH: d->gnu_hash = dyn_ptr(d, v); break;
        case DT_HASH: d->sysv_hash = dyn_ptr(d, v); break;
        case DT_VERSYM: d->versym = dyn_ptr(d, v); break;
        case DT_JMPREL: d->jmprel = dyn_ptr(d, v); break;
        case DT_PLTRELSZ: d->jmprel_size = dyn->d_un.d_val; break;
        case DT_PLTREL: pltrel = dyn->d_un.d_val; break;
        case DT_RELA: d->rela = dyn_ptr(d, v); break;
        case DT_RELASZ: d->rela_size = dyn->d_un.d_val; break;
        default: break;
        }
    }
    if (pltrel != DT_RELA) {
        d->jmprel = NULL;
        d->jmprel_size = 0;
    }
    if (d->symtab == NULL || d->strtab == NULL)
        return -1;
    return 0;
}

/* Our own comparison: a sanitizer's strcmp interceptor may not be ready when
 * its runtime, starting up, calls dlsym (which is ours). */
static int same(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

/* A definition D exports under NAME, as the loader would bind a reference
 * without a version: defined, global or weak, not a hidden version. */
static const ElfW(Sym) *match(const struct lc_dso *d, uint32_t i, const char *name)
{
    const ElfW(Sym) *s = &d->symtab[i];
    if (s->st_shndx == SHN_UNDEF || s->st_name >= d->strsz)
        return NULL;
    int bind = ELF64_ST_BIND(s->st_info);
    if (bind != STB_GLOBAL && bind != STB_WEAK)
        return NULL;
    if (d->versym && ((d->versym[i] & 0x8000) || d->versym[i] == 0))
        return NULL;
    return same(d->strtab + s->st_name, name) ? s : NULL;
}

static const ElfW(Sym) *find_gnu(const struct lc_dso *d, const char *name)
{
    const uint32_t *h = d->gnu_hash;
    uint32_t nbuckets = h[0], symoffset = h[1], bloom_size = h[2];
    if (nbuckets == 0)
        return NULL;
    const ElfW(Addr) *bloom = (const ElfW(Addr) *)(h + 4);
    const uint32_t *buckets = (const uint32_t *)(bloom + bloom_size);
    const uint32_t *chain = buckets + nbuckets;
    uint32_t hash = 5381;
    for (const unsigned char *c = (const unsigned char *)name; *c; c++)
        hash = hash * 33 + *c;
    uint32_t i = buckets[hash % nbuckets];
    if (i < symoffset)
        return NULL;
    for (;; i++) {
        uint32_t ch = chain[i - symoffset];
        if ((ch | 1) == (hash | 1)) {
            const ElfW(Sym) *s = match(d, i, name);
            if (s)
                return s;
        }
        if (ch & 1)
            return NULL;
    }
}

static const ElfW(Sym) *find_sysv(const struct lc_dso *d, const char *name)
{
    const uint32_t *h = d->sysv_hash;
    uint32_t nbucket = h[0];
    if (nbucket == 0)
        return NULL;
    const uint32_t *bucket = h + 2, *chain = bucket + nbucket;
    uint32_t hash = 0;
    for (const unsigned char *c = (const unsigned char *)name; *c; c++) {
        hash = (hash << 4) + *c;
        uint32_t g = hash & 0xf0000000u;
        hash ^= g >> 24;
        hash &= ~g;
    }
    for (uint32_t i = bucket[hash % nbucket]; i != STN_UNDEF; i = chain[i]) {
        const ElfW(Sym) *s = match(d, i, name);
        if (s)
            return s;
    }
    return NULL;
}

static const ElfW(Sym) *find(const struct lc_dso *d, const char *name)
{
    if (d->gnu_hash)
        return find_gnu(d, name);
    if (d->sysv_hash)
        return find_sysv(d, name);
    return NULL;
}

int dso_defines(const struct lc_dso *d, const char *name)
{
    return find(d, name) != NULL;
}

void *dso_lookup(const struct lc_dso *d, const char *name)
{
    const ElfW(Sym) *s = find(d, name);
    if (s == NULL || ELF64_ST_TYPE(s->st_info) == STT_GNU_IFUNC ||
        ELF64_ST_TYPE(s->st_info) == STT_TLS)
        return NULL;
    return (void *)(d->base + s->st_value);
}

/* The page's protection right now, from /proc/self/maps: an object another
 * thread is still relocating has writable RELRO pages, and putting them back
 * to read-only under the loader would make it fault. -1 if unknown. */
static int page_prot(uintptr_t page)
{
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[4096];
    size_t len = 0;
    int prot = -1;
    for (;;) {
        ssize_t r = read(fd, buf + len, sizeof buf - 1 - len);
        if (r <= 0)
            break;
        len += (size_t)r;
        buf[len] = '\0';
        char *line = buf, *nl;
        while ((nl = strchr(line, '\n')) != NULL) {
            *nl = '\0';
            char *dash;
            unsigned long lo = strtoul(line, &dash, 16);
            unsigned long hi = dash && *dash == '-' ? strtoul(dash + 1, &dash, 16) : 0;
            if (page >= lo && page < hi && dash && dash[0] == ' ') {
                prot = (dash[1] == 'r' ? PROT_READ : 0) | (dash[2] == 'w' ? PROT_WRITE : 0) |
                       (dash[3] == 'x' ? PROT_EXEC : 0);
                goto out;
            }
            line = nl + 1;
        }
        len = strlen(line);
        memmove(buf, line, len);
        if (len >= sizeof buf - 1)
            break; /* a line longer than the buffer: give up */
    }
out:
    close(fd);
    return prot;
}

/* Held across one page's protection read, change, store and restore: only
 * system calls and our own parsing inside (this file is built with -fno-plt:
 * not even a first lazy binding), never a call into the loader. */
static pthread_mutex_t write_lock = PTHREAD_MUTEX_INITIALIZER;

void got_fork_prepare(void)
{
    pthread_mutex_lock(&write_lock);
}

void got_fork_release(void)
{
    pthread_mutex_unlock(&write_lock);
}

static int write_slot_locked(void **slot, void *value)
{
    uintptr_t pagesize = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t page = (uintptr_t)slot & ~(pagesize - 1);
    int prot = page_prot(page);
    if (prot < 0)
        return -1;
    if (prot & PROT_WRITE) {
        __atomic_store_n(slot, value, __ATOMIC_RELEASE);
        return 0;
    }
    if (mprotect((void *)page, pagesize, prot | PROT_WRITE) != 0)
        return -1;
    __atomic_store_n(slot, value, __ATOMIC_RELEASE);
    mprotect((void *)page, pagesize, prot);
    return 0;
}

int got_write(void **slot, void *value)
{
    pthread_mutex_lock(&write_lock);
    int r = write_slot_locked(slot, value);
    pthread_mutex_unlock(&write_lock);
    return r;
}

static int each_in(const struct lc_dso *d, const ElfW(Rela) *rel, size_t size, got_entry_fn fn,
                   void *ctx)
{
#ifdef LC_R_JUMP_SLOT
    for (size_t i = 0; rel && i < size / sizeof *rel; i++) {
        unsigned type = (unsigned)ELF64_R_TYPE(rel[i].r_info);
        if (type != LC_R_JUMP_SLOT && type != LC_R_GLOB_DAT)
            continue;
        const ElfW(Sym) *s = &d->symtab[ELF64_R_SYM(rel[i].r_info)];
        if (s->st_shndx != SHN_UNDEF || s->st_name == 0 || s->st_name >= d->strsz)
            continue;
        void **slot = (void **)(d->base + rel[i].r_offset);
        if (fn(d->strtab + s->st_name, slot, __atomic_load_n(slot, __ATOMIC_ACQUIRE), ctx))
            return 1;
    }
#else
    (void)d, (void)rel, (void)size, (void)fn, (void)ctx;
#endif
    return 0;
}

void got_each(const struct lc_dso *d, got_entry_fn fn, void *ctx)
{
    if (each_in(d, d->jmprel, d->jmprel_size, fn, ctx) == 0)
        each_in(d, d->rela, d->rela_size, fn, ctx);
}
