#define _GNU_SOURCE
#include "launcher/elf_facts.h"
#include "core/arch.h"

#include <dirent.h>
#include <stdio.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const void *at(const unsigned char *base, size_t size, size_t off, size_t len)
{
    return off <= size && len <= size - off ? base + off : NULL;
}

void read_elf(const char *path, struct elf_facts *f)
{
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < (off_t)sizeof(Elf64_Ehdr)) {
        close(fd);
        return;
    }
    size_t size = (size_t)st.st_size;
    const unsigned char *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return;
    if (memcmp(m, ELFMAG, SELFMAG) != 0)
        goto out;
    f->is_elf = 1;
    if (m[EI_CLASS] != ELFCLASS64)
        goto out;
    f->is_64 = 1;
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)m;
    const Elf64_Phdr *ph = at(m, size, eh->e_phoff, (size_t)eh->e_phnum * sizeof *ph);
    const Elf64_Phdr *dyn_ph = NULL;
    for (int i = 0; ph && i < eh->e_phnum; i++) {
        if (ph[i].p_type == PT_INTERP) {
            const char *s = at(m, size, ph[i].p_offset, ph[i].p_filesz);
            if (s) {
                f->dynamic = 1;
                snprintf(f->interp, sizeof f->interp, "%.*s", (int)ph[i].p_filesz, s);
            }
        } else if (ph[i].p_type == PT_DYNAMIC) {
            dyn_ph = &ph[i];
        }
    }
    /* Section names: Go binaries carry .note.go.buildid / .go.buildinfo. */
    const Elf64_Shdr *sh = at(m, size, eh->e_shoff, (size_t)eh->e_shnum * sizeof *sh);
    if (sh && eh->e_shstrndx < eh->e_shnum) {
        const char *names = at(m, size, sh[eh->e_shstrndx].sh_offset, sh[eh->e_shstrndx].sh_size);
        for (int i = 0; names && i < eh->e_shnum; i++) {
            if (sh[i].sh_name >= sh[eh->e_shstrndx].sh_size)
                continue;
            const char *nm = names + sh[i].sh_name;
            if (strcmp(nm, ".note.go.buildid") == 0 || strcmp(nm, ".go.buildinfo") == 0)
                f->go = 1;
        }
    }
    /* Undefined dynamic symbols naming dlopen/dlmopen. */
    for (int i = 0; sh && i < eh->e_shnum; i++) {
        if (sh[i].sh_type != SHT_DYNSYM || sh[i].sh_link >= eh->e_shnum)
            continue;
        const Elf64_Sym *syms = at(m, size, sh[i].sh_offset, sh[i].sh_size);
        const Elf64_Shdr *strsh = &sh[sh[i].sh_link];
        const char *str = at(m, size, strsh->sh_offset, strsh->sh_size);
        size_t n = syms && str ? sh[i].sh_size / sizeof *syms : 0;
        for (size_t k = 0; k < n; k++) {
            if (syms[k].st_name >= strsh->sh_size)
                continue;
            const char *nm = str + syms[k].st_name;
            size_t room = strsh->sh_size - syms[k].st_name;
            if (syms[k].st_shndx != SHN_UNDEF) {
                if (strncmp(nm, "mysql_real_connect", room) == 0)
                    f->defines_mysql = 1;
                continue;
            }
            if (strncmp(nm, "dlopen", room) == 0 || strncmp(nm, "dlmopen", room) == 0)
                f->dlopens = 1;
        }
    }
    /* DT_NEEDED: string offsets into DT_STRTAB, an address to map through PT_LOAD. */
    if (dyn_ph && ph) {
        const Elf64_Dyn *dyn = at(m, size, dyn_ph->p_offset, dyn_ph->p_filesz);
        size_t count = dyn ? dyn_ph->p_filesz / sizeof *dyn : 0;
        uint64_t strtab_addr = 0;
        for (size_t i = 0; i < count && dyn[i].d_tag != DT_NULL; i++)
            if (dyn[i].d_tag == DT_STRTAB)
                strtab_addr = dyn[i].d_un.d_ptr;
        size_t strtab_off = 0;
        for (int i = 0; i < eh->e_phnum; i++)
            if (ph[i].p_type == PT_LOAD && strtab_addr >= ph[i].p_vaddr &&
                strtab_addr < ph[i].p_vaddr + ph[i].p_filesz)
                strtab_off = (size_t)(strtab_addr - ph[i].p_vaddr + ph[i].p_offset);
        for (size_t i = 0; strtab_off && i < count && dyn[i].d_tag != DT_NULL; i++) {
            if (dyn[i].d_tag != DT_NEEDED || f->n_needed >= 32)
                continue;
            const char *s = at(m, size, strtab_off + dyn[i].d_un.d_val, 1);
            if (s)
                snprintf(f->needed[f->n_needed++], sizeof f->needed[0], "%.*s",
                         (int)strnlen(s, size - (size_t)(s - (const char *)m)), s);
        }
    }
out:
    munmap((void *)m, size);
}

int has_prefix_lib(const char *name, const char *prefix)
{
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    return strncmp(base, prefix, strlen(prefix)) == 0;
}

static const char *const lib_prefixes[][3] = {
    [LIB_PQ] = {"libpq.so", NULL, NULL},
    [LIB_HIREDIS] = {"libhiredis.so", NULL, NULL},
    [LIB_MYSQL] = {"libmariadb.so", "libmysqlclient.so", "libperconaserverclient.so"},
};
static const char *const lib_words[] = {"libpq", "hiredis", "libmariadb"};

int which_lib(const char *name)
{
    for (int l = 0; l < N_LIBS; l++)
        for (int i = 0; i < 3 && lib_prefixes[l][i]; i++)
            if (has_prefix_lib(name, lib_prefixes[l][i]))
                return l;
    return -1;
}

/* "libpq", "libpq and hiredis", "libpq, hiredis and libmariadb"; for
 * libmysqlclient its own name. */
void join_libs(const int *found, const char *mysql_name, char *out, size_t size)
{
    int n = 0, total = 0;
    for (int l = 0; l < N_LIBS; l++)
        total += found[l] != 0;
    out[0] = '\0';
    for (int l = 0; l < N_LIBS; l++) {
        if (!found[l])
            continue;
        const char *w = l == LIB_MYSQL && mysql_name ? mysql_name : lib_words[l];
        size_t len = strlen(out);
        snprintf(out + len, size - len, "%s%s", n == 0 ? "" : n == total - 1 ? " and " : ", ", w);
        n++;
    }
}

/* Quotes S for the shell: single quotes, embedded ones escaped. */
void shell_quote(const char *s, char *q, size_t size)
{
    size_t o = 0;
    q[o++] = '\'';
    for (const char *p = s; *p && o + 6 < size; p++) {
        if (*p == '\'') {
            memcpy(q + o, "'\\''", 4);
            o += 4;
        } else {
            q[o++] = *p;
        }
    }
    q[o++] = '\'';
    q[o] = '\0';
}

/* Every library the dynamic loader would load, through `ld.so --list` (the
 * loader only resolves; the program does not run). */
void transitive_libs(const char *interp, const char *path, int *found, char *via,
                            size_t via_size)
{
    char cmd[PATH_MAX * 2 + 64];
    char q[PATH_MAX + 8];
    shell_quote(path, q, sizeof q);
    snprintf(cmd, sizeof cmd, "'%s' --list %s 2>/dev/null", interp, q);
    FILE *f = popen(cmd, "r");
    if (f == NULL)
        return;
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        char *name = line + strspn(line, " \t");
        name[strcspn(name, " \t\n")] = '\0';
        int l = which_lib(name);
        if (l >= 0 && !found[l]) {
            found[l] = 1;
            snprintf(via + strlen(via), via_size - strlen(via), "%s%s", *via ? ", " : "", name);
        }
    }
    pclose(f);
}
