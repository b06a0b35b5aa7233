/* The dynamic section of an object already loaded into this process: its
 * symbol table (what it defines) and its GOT (where its calls go).
 *
 * Used to recognise libpq/hiredis by what they define rather than by file
 * name (bundled copies have hashed names), to find libc's own dlsym, and to
 * point a library's GOT entries at our hooks when it binds past the global
 * scope (RTLD_DEEPBIND). Nothing here allocates: it may run before a
 * sanitizer runtime has finished starting. */
#ifndef LC_GOT_H
#define LC_GOT_H

#include <link.h>
#include <stddef.h>
#include <stdint.h>

struct lc_dso {
    ElfW(Addr) base;            /* l_addr */
    const char *name;           /* dlpi_name: "" for the main program */
    uintptr_t start, end;       /* the mapped range (PT_LOAD) */
    const ElfW(Phdr) *phdr;
    int phnum;
    const ElfW(Sym) *symtab;
    const char *strtab;
    size_t strsz;
    const ElfW(Half) *versym;
    const uint32_t *gnu_hash;
    const uint32_t *sysv_hash;
    const ElfW(Rela) *jmprel;   /* DT_JMPREL (x86-64: RELA) */
    size_t jmprel_size;
    const ElfW(Rela) *rela;     /* DT_RELA */
    size_t rela_size;
};

/* Fills D from one dl_iterate_phdr entry; returns 0, or -1 without a usable
 * dynamic section (a static object, an unsupported format). */
int dso_parse(const struct dl_phdr_info *info, struct lc_dso *d);

/* The same from a link map (the _r_debug list), for callers that must not
 * call dl_iterate_phdr (ThreadSanitizer intercepts it). Shared objects only. */
int dso_from_link_map(const struct link_map *lm, struct lc_dso *d);

/* Address of NAME's default definition in D itself (not its dependencies),
 * or NULL. IFUNCs count as defined but yield NULL (never called here). */
void *dso_lookup(const struct lc_dso *d, const char *name);
int dso_defines(const struct lc_dso *d, const char *name);

/* Is ADDR inside D's mapping? */
static inline int dso_contains(const struct lc_dso *d, const void *addr)
{
    uintptr_t a = (uintptr_t)addr;
    return a >= d->start && a < d->end;
}

/* Calls FN(name, slot, current value, ctx) for each JUMP_SLOT / GLOB_DAT entry
 * of D that names a symbol D does not define, until FN returns non-zero. Only
 * reads D: safe inside dl_iterate_phdr's callback. */
typedef int (*got_entry_fn)(const char *name, void **slot, void *current, void *ctx);
void got_each(const struct lc_dso *d, got_entry_fn fn, void *ctx);

/* Stores VALUE in SLOT, a GOT entry of a loaded object, keeping its page's
 * protection (RELRO): made writable only for the store if it is not. 0, or
 * -1 when the page's protection could not be read or changed. */
int got_write(void **slot, void *value);

/* Writes from several threads at once are serialised (one makes a page
 * writable, another must not store after the first put it back); fork waits
 * for a write under way: prepare takes the write lock, release gives it back
 * in parent and child. */
void got_fork_prepare(void);
void got_fork_release(void);

#endif
