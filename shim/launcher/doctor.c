#define _GNU_SOURCE
#include "launcher/doctor.h"
#include "core/arch.h"

#include <dirent.h>
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

int doctor_resolve(const char *cmd, char *out, size_t size)
{
    if (cmd == NULL || *cmd == '\0')
        return -1;
    if (strchr(cmd, '/')) {
        if (access(cmd, F_OK) != 0)
            return -1;
        snprintf(out, size, "%s", cmd);
        return 0;
    }
    const char *path = getenv("PATH");
    if (path == NULL)
        path = "/usr/local/bin:/usr/bin:/bin";
    char *copy = strdup(path);
    if (copy == NULL)
        return -1;
    int found = -1;
    char *save = NULL;
    for (char *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
        char candidate[PATH_MAX];
        if (*dir == '\0')
            continue; /* an empty PATH entry means "." : never search the current directory */
        snprintf(candidate, sizeof candidate, "%s/%s", dir, cmd);
        struct stat st;
        if (stat(candidate, &st) == 0 && S_ISREG(st.st_mode) && access(candidate, X_OK) == 0) {
            snprintf(out, size, "%s", candidate);
            found = 0;
            break;
        }
    }
    free(copy);
    return found;
}

struct elf_facts {
    int is_elf;
    int is_64;
    int dynamic;          /* has PT_INTERP */
    int go;               /* Go build id or buildinfo section */
    char interp[256];
    char needed[32][128]; /* DT_NEEDED */
    int n_needed;
    int dlopens;          /* imports dlopen or dlmopen: may load libraries at run time */
    int defines_mysql;    /* defines mysql_real_connect: its own copy of the MySQL client */
};

static const void *at(const unsigned char *base, size_t size, size_t off, size_t len)
{
    return off <= size && len <= size - off ? base + off : NULL;
}

static void read_elf(const char *path, struct elf_facts *f)
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

static int has_prefix_lib(const char *name, const char *prefix)
{
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    return strncmp(base, prefix, strlen(prefix)) == 0;
}

/* The client libraries lastcall interposes, by file name: libpq, hiredis,
 * the MySQL client (MariaDB Connector/C, Oracle's libmysqlclient). */
enum { LIB_PQ, LIB_HIREDIS, LIB_MYSQL, N_LIBS };
static const char *const lib_prefixes[][3] = {
    [LIB_PQ] = {"libpq.so", NULL, NULL},
    [LIB_HIREDIS] = {"libhiredis.so", NULL, NULL},
    [LIB_MYSQL] = {"libmariadb.so", "libmysqlclient.so", "libperconaserverclient.so"},
};
static const char *const lib_words[] = {"libpq", "hiredis", "libmariadb"};

static int which_lib(const char *name)
{
    for (int l = 0; l < N_LIBS; l++)
        for (int i = 0; i < 3 && lib_prefixes[l][i]; i++)
            if (has_prefix_lib(name, lib_prefixes[l][i]))
                return l;
    return -1;
}

/* "libpq", "libpq and hiredis", "libpq, hiredis and libmariadb"; for
 * libmysqlclient its own name. */
static void join_libs(const int *found, const char *mysql_name, char *out, size_t size)
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
static void shell_quote(const char *s, char *q, size_t size)
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
static void transitive_libs(const char *interp, const char *path, int *found, char *via,
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

/* ---- interpreters: which drivers are installed, and how each reaches
 * libpq or hiredis. "yes" only for the paths tests/integration proves
 * (the test named on each line). ---- */

/* The output of INTERP running ARGS (already quoted), at most SIZE-1 bytes. */
static void capture(const char *interp, const char *args, char *out, size_t size)
{
    char q[PATH_MAX + 8], cmd[PATH_MAX * 2 + 1024];
    shell_quote(interp, q, sizeof q);
    snprintf(cmd, sizeof cmd, "%s %s 2>/dev/null </dev/null", q, args);
    out[0] = '\0';
    FILE *f = popen(cmd, "r");
    if (f == NULL)
        return;
    size_t n = fread(out, 1, size - 1, f);
    out[n] = '\0';
    pclose(f);
}

/* "linked to libpq.so.5" or "linked to a bundled libpq, libpq-1a2b.so.5.15". */
static int module_libpq(const char *dir, const char *prefix, char *how, size_t size)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0 || len < 4 ||
            strstr(e->d_name, ".so") == NULL)
            continue;
        char so[PATH_MAX];
        snprintf(so, sizeof so, "%s/%s", dir, e->d_name);
        struct elf_facts f;
        read_elf(so, &f);
        for (int i = 0; i < f.n_needed && !found; i++) {
            if (has_prefix_lib(f.needed[i], "libpq.so")) {
                snprintf(how, size, "an extension module linked to %s, loaded in a local scope",
                         f.needed[i]);
                found = 1;
            } else if (has_prefix_lib(f.needed[i], "libpq")) {
                snprintf(how, size, "an extension module linked to a bundled libpq, %s, "
                                    "loaded in a local scope", f.needed[i]);
                found = 2;
            }
        }
    }
    closedir(d);
    return found;
}

static const char python_probe[] =
    "-c 'import importlib.util as u\n"
    "for m in (\"psycopg2\", \"psycopg\", \"psycopg_c\", \"psycopg_binary\", \"redis\",\n"
    "          \"MySQLdb\", \"pymysql\", \"mysql.connector\"):\n"
    "    try:\n"
    "        s = u.find_spec(m)\n"
    "    except Exception:\n"
    "        s = None\n"
    "    loc = s.submodule_search_locations if s else None\n"
    "    print(m, list(loc)[0] if loc else (\"-\" if s is None else \"module\"))'";

/* The package directory the probe printed for NAME, or NULL. */
static const char *probe_dir(const char *text, const char *name, char *out, size_t size)
{
    size_t n = strlen(name);
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, name, n) != 0 || l[n] != ' ')
            continue;
        const char *v = l + n + 1;
        size_t len = strcspn(v, "\n");
        if (len == 1 && *v == '-')
            return NULL;
        snprintf(out, size, "%.*s", (int)len, v);
        return out;
    }
    return NULL;
}

static void python_drivers(const char *interp, FILE *out)
{
    char text[4096], dir[PATH_MAX], how[PATH_MAX + 128];
    capture(interp, python_probe, text, sizeof text);
    int any = 0;
    if (probe_dir(text, "psycopg2", dir, sizeof dir)) {
        any = 1;
        int k = module_libpq(dir, "_psycopg", how, sizeof how);
        if (k == 1)
            fprintf(out, "    driver psycopg2: yes, %s (tested: signal_drain/"
                         "python_psycopg2_sigterm_with_open_transactions)\n", how);
        else if (k == 2)
            fprintf(out, "    driver psycopg2: yes, %s (tested: reach/"
                         "bundled_libpq_copy_in_a_local_scope_is_tracked_and_drained)\n", how);
        else
            fprintf(out, "    driver psycopg2: unknown, no extension module linked to libpq "
                         "found in %s\n", dir);
    }
    if (probe_dir(text, "psycopg", dir, sizeof dir)) {
        any = 1;
        char cdir[PATH_MAX];
        /* psycopg picks the C implementation, then the binary one, then Python. */
        if (probe_dir(text, "psycopg_c", cdir, sizeof cdir) &&
            module_libpq(cdir, "pq", how, sizeof how))
            fprintf(out, "    driver psycopg (3), C implementation: yes, %s, the path of "
                         "psycopg2 (tested: signal_drain/"
                         "python_psycopg2_sigterm_with_open_transactions)\n", how);
        else if (probe_dir(text, "psycopg_binary", cdir, sizeof cdir))
            fprintf(out, "    driver psycopg (3), binary implementation: yes, an extension "
                         "module linked to a bundled libpq under another name, in a local scope "
                         "(tested: reach/"
                         "bundled_libpq_copy_in_a_local_scope_is_tracked_and_drained)\n");
#if LC_ARCH_DL_STUBS
        else
            fprintf(out, "    driver psycopg (3), Python implementation: yes, libpq loaded "
                         "through ctypes (dlopen) and its functions found with dlsym, which "
                         "lastcall answers with its hooks (tested: reach/"
                         "psycopg3_sigterm_with_open_transactions)\n");
#else
        else
            fprintf(out, "    driver psycopg (3), Python implementation: no, libpq's functions "
                         "are found with dlsym (ctypes), and on " LC_ARCH_NAME " lastcall does "
                         "not interpose dlsym (x86-64 and aarch64 only)\n");
#endif
    }
    if (probe_dir(text, "redis", dir, sizeof dir)) {
        any = 1;
        fprintf(out, "    driver redis (redis-py): no, it speaks the Redis protocol in Python "
                     "(hiredis-py, if installed, only parses replies)\n");
    }
    if (probe_dir(text, "MySQLdb", dir, sizeof dir)) {
        any = 1;
        fprintf(out, "    driver MySQLdb (mysqlclient): yes, an extension module linked to "
                     "libmariadb, loaded in a local scope (tested: mysql/"
                     "python_mysqldb_sigterm_mid_transaction)\n");
    }
    if (probe_dir(text, "pymysql", dir, sizeof dir)) {
        any = 1;
        fprintf(out, "    driver PyMySQL: no, it speaks the MySQL protocol in Python\n");
    }
    if (probe_dir(text, "mysql.connector", dir, sizeof dir)) {
        any = 1;
        fprintf(out, "    driver mysql.connector: no, Oracle's Connector/Python speaks the "
                     "protocol itself (its C extension bundles its own client library)\n");
    }
    if (!any)
        fprintf(out, "    no PostgreSQL, Redis or MySQL driver found (psycopg2, psycopg, redis, "
                     "MySQLdb)\n");
}

static void php_drivers(const char *interp, FILE *out)
{
    /* -m lists the loaded modules one a line; php-fpm takes it too. */
    char text[8192] = "\n";
    capture(interp, "-m", text + 1, sizeof text - 1);
    int any = 0;
    const char *pq_exts[] = {"pgsql", "pdo_pgsql"};
    for (int i = 0; i < 2; i++) {
        char word[32];
        snprintf(word, sizeof word, "\n%s\n", pq_exts[i]);
        if (strstr(text, word) == NULL)
            continue;
        any = 1;
#if LC_ARCH_DL_STUBS && LC_ARCH_GOT
        fprintf(out, "    driver %s: yes, a PHP extension linked to libpq and loaded with "
                     "RTLD_DEEPBIND; lastcall points its GOT entries at its hooks (tested: "
                     "reach/php_pgsql_sigterm_with_open_transactions)\n", pq_exts[i]);
#else
        fprintf(out, "    driver %s: no, a PHP extension loaded with RTLD_DEEPBIND binds "
                     "straight to libpq, and on " LC_ARCH_NAME " lastcall does not rewrite its "
                     "GOT (x86-64 and aarch64 only)\n", pq_exts[i]);
#endif
    }
    if (strstr(text, "\nredis\n")) {
        any = 1;
        fprintf(out, "    driver redis (phpredis): no, it speaks the Redis protocol itself\n");
    }
    const char *my_exts[] = {"mysqli", "pdo_mysql"};
    for (int i = 0; i < 2; i++) {
        char word[32];
        snprintf(word, sizeof word, "\n%s\n", my_exts[i]);
        if (strstr(text, word) == NULL)
            continue;
        any = 1;
        fprintf(out, "    driver %s: no, it uses mysqlnd, PHP's own implementation of the MySQL "
                     "protocol, not a client library lastcall can interpose\n", my_exts[i]);
    }
    if (!any)
        fprintf(out, "    no pgsql, pdo_pgsql, redis, mysqli or pdo_mysql extension is loaded\n");
}

/* Returns 1 if BASE names an interpreter we know (drivers printed). */
static int interpreter_drivers(const char *path, const char *base, FILE *out)
{
    if (strncmp(base, "python", 6) == 0) {
        fprintf(out, "  depends: %s is the Python interpreter; what lastcall sees depends on "
                     "the driver the program imports:\n", path);
        python_drivers(path, out);
        return 1;
    }
    if (strncmp(base, "php", 3) == 0) {
        fprintf(out, "  depends: %s is the PHP interpreter; what lastcall sees depends on the "
                     "extension the program uses:\n", path);
        php_drivers(path, out);
        return 1;
    }
    const char *untested = NULL;
    if (strncmp(base, "perl", 4) == 0)
        untested = "Perl: DBD::Pg and Redis::hiredis link libpq/hiredis from an XS module, the "
                   "path of psycopg2 (not tested here); DBD::MariaDB and DBD::mysql link "
                   "libmariadb the same way (tested: mysql/"
                   "perl_dbd_mariadb_sigterm_mid_transaction)";
    else if (strncmp(base, "ruby", 4) == 0)
        untested = "Ruby: the pg, hiredis and mysql2 gems link libpq/hiredis/libmariadb from an "
                   "extension, the path of psycopg2; Ruby's FFI uses dlsym, the path of psycopg "
                   "3; not tested here";
    else if (strcmp(base, "node") == 0 || strcmp(base, "nodejs") == 0)
        untested = "Node.js: pg-native links libpq from an addon; the pure-JS pg and redis "
                   "clients are not seen; not tested here";
    if (untested == NULL)
        return 0;
    fprintf(out, "  depends: %s is an interpreter that loads database drivers at run time. %s\n",
            path, untested);
    return 1;
}

/* Debian's pg_wrapper (/usr/bin/psql, pgbench...) is a Perl script that execs
 * the real program from /usr/lib/postgresql/VERSION/bin. */
static int debian_pg_wrapper_target(const char *script, const char *base, char *out, size_t size)
{
    FILE *f = fopen(script, "r");
    if (f == NULL)
        return -1;
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    if (strstr(buf, "PgCommon") == NULL)
        return -1;
    DIR *d = opendir("/usr/lib/postgresql");
    if (d == NULL)
        return -1;
    int best = -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int v = atoi(e->d_name);
        char candidate[PATH_MAX];
        snprintf(candidate, sizeof candidate, "/usr/lib/postgresql/%s/bin/%s", e->d_name, base);
        if (v > best && access(candidate, X_OK) == 0) {
            best = v;
            snprintf(out, size, "%s", candidate);
        }
    }
    closedir(d);
    return best >= 0 ? 0 : -1;
}

static void report_signals(FILE *out)
{
    const int sigs[] = {SIGTERM, SIGINT};
    const char *names[] = {"SIGTERM", "SIGINT"};
    sigset_t blocked;
    sigprocmask(SIG_BLOCK, NULL, &blocked);
    for (int i = 0; i < 2; i++) {
        struct sigaction sa;
        if (sigaction(sigs[i], NULL, &sa) != 0)
            continue;
        if (sa.sa_handler == SIG_IGN)
            fprintf(out, "  note: %s is ignored in this environment (inherited); it stays "
                         "ignored under lastcall, so it will not start a drain\n", names[i]);
        if (sigismember(&blocked, sigs[i]) == 1)
            fprintf(out, "  note: %s is blocked in this environment; the program inherits "
                         "the mask\n", names[i]);
    }
    if (getpid() == 1)
        fprintf(out, "  note: running as PID 1: after a drain lastcall exits 128+N, since the "
                     "kernel drops a default-action signal for init\n");
    if (getpid() == 1)
        fprintf(out, "  note: lastcall reaps no orphans: if the program spawns children, put "
                     "an init first (tini -- lastcall -- ..., dumb-init lastcall -- ..., "
                     "docker run --init)\n");
}

/* This launcher's liblastcall.so is built for the launcher's own C library:
 * a program whose loader is the other libc's cannot take it. Either way the
 * loader refuses the preload and the program does not start (status 127).
 * Returns 1 (after saying so) on such a mismatch. */
static int libc_mismatch(const char *path, const char *interp, FILE *out)
{
    int musl_program = strstr(interp, "ld-musl") != NULL;
    int glibc_program = strstr(interp, "ld-linux") != NULL;
#ifdef __GLIBC__
    if (musl_program) {
        fprintf(out, "  no: %s is a musl program (its loader is %s) and this lastcall is built "
                     "for glibc: musl's loader cannot load a glibc library (it needs glibc's "
                     "loader and glibc-only symbols: \"Error relocating liblastcall.so: ... "
                     "symbol not found\") and refuses to start the program at all (status 127). "
                     "Use a lastcall built with musl (musl-gcc, or on Alpine)\n", path, interp);
        return 1;
    }
#else
    if (glibc_program) {
        fprintf(out, "  no: %s is a glibc program (its loader is %s) and this lastcall is built "
                     "for musl: glibc's loader cannot load a musl library (it needs musl's "
                     "libc.so, which on a glibc system is a linker script: \"libc.so: invalid "
                     "ELF header\") and the program does not start (status 127). Use a lastcall "
                     "built for glibc\n", path, interp);
        return 1;
    }
#endif
    (void)musl_program;
    (void)glibc_program;
    return 0;
}

static int analyse(const char *path, FILE *out, int depth)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(out, "  no: %s: %s\n", path, strerror(errno));
        return DOCTOR_NOT_FOUND;
    }
    if (st.st_mode & (S_ISUID | S_ISGID)) {
        fprintf(out, "  no: %s is set%s: the dynamic loader ignores LD_PRELOAD for it\n", path,
                (st.st_mode & S_ISUID) ? "uid" : "gid");
        return DOCTOR_NO;
    }
    /* Scripts: follow the interpreter. */
    FILE *f = fopen(path, "r");
    char first[512] = "";
    if (f) {
        if (fgets(first, sizeof first, f) == NULL)
            first[0] = '\0';
        fclose(f);
    }
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (first[0] == '#' && first[1] == '!' && depth < 4) {
        char *interp = first + 2 + strspn(first + 2, " \t");
        interp[strcspn(interp, " \t\n")] = '\0';
        char *args = interp + strlen(interp) + 1;
        const char *ibase = strrchr(interp, '/');
        ibase = ibase ? ibase + 1 : interp;
        char target[PATH_MAX];
        if (debian_pg_wrapper_target(path, base, target, sizeof target) == 0) {
            fprintf(out, "  %s is Debian's pg_wrapper script; it execs %s, which inherits "
                         "LD_PRELOAD\n", path, target);
            return analyse(target, out, depth + 1);
        }
        if (strcmp(ibase, "env") == 0) {
            /* "#!/usr/bin/env python3": the interpreter is the next word. */
            char *word = args + strspn(args, " \t");
            word[strcspn(word, " \t\n")] = '\0';
            char resolved[PATH_MAX];
            if (*word && doctor_resolve(word, resolved, sizeof resolved) == 0) {
                fprintf(out, "  %s is a script run by %s\n", path, resolved);
                return analyse(resolved, out, depth + 1);
            }
        }
        fprintf(out, "  %s is a script run by %s\n", path, interp);
        return analyse(interp, out, depth + 1);
    }
    struct elf_facts e;
    read_elf(path, &e);
    if (!e.is_elf) {
        fprintf(out, "  no: %s is neither an ELF program nor a #! script\n", path);
        return DOCTOR_NO;
    }
    if (!e.is_64) {
        fprintf(out, "  no: %s is a 32-bit program; this liblastcall.so is 64-bit\n", path);
        return DOCTOR_NO;
    }
    if (e.go) {
        fprintf(out, "  no: %s is a Go program: Go talks to PostgreSQL and Redis in Go "
                     "(and is usually static), not through libpq or hiredis\n", path);
        return DOCTOR_NO;
    }
    if (!e.dynamic) {
        fprintf(out, "  no: %s is statically linked: LD_PRELOAD has no effect on it\n", path);
        return DOCTOR_NO;
    }
    if (libc_mismatch(path, e.interp, out))
        return DOCTOR_NO;
    if (e.defines_mysql) {
        fprintf(out, "  no: %s defines mysql_real_connect itself: the MySQL client library is "
                     "linked into it statically (as in Debian's mariadb and mysql clients), so "
                     "its calls never reach a preloaded library\n", path);
        return DOCTOR_NO;
    }
    int found[N_LIBS] = {0};
    const char *mysql_name = NULL;
    for (int i = 0; i < e.n_needed; i++) {
        int l = which_lib(e.needed[i]);
        if (l >= 0)
            found[l] = 1;
        if (l == LIB_MYSQL && has_prefix_lib(e.needed[i], "libmysqlclient.so"))
            mysql_name = "libmysqlclient";
    }
    if (found[LIB_PQ] || found[LIB_HIREDIS] || found[LIB_MYSQL]) {
        char libs[128];
        join_libs(found, mysql_name, libs, sizeof libs);
        fprintf(out, "  yes: %s imports %s directly\n", path, libs);
        return DOCTOR_YES;
    }
    char via[512] = "";
    transitive_libs(e.interp, path, found, via, sizeof via);
    if (found[LIB_PQ] || found[LIB_HIREDIS] || found[LIB_MYSQL]) {
        fprintf(out, "  yes: %s loads %s through its libraries\n", path, via);
        return DOCTOR_YES;
    }
    if (interpreter_drivers(path, base, out))
        return DOCTOR_DEPENDS;
    if (e.dlopens) {
#if LC_ARCH_DL_STUBS && LC_ARCH_GOT
        fprintf(out, "  depends: %s links neither libpq nor hiredis nor a MySQL client library "
                     "but loads libraries at run time (dlopen). lastcall sees libpq and hiredis "
                     "loaded that way: in a local scope, with RTLD_DEEPBIND, as a bundled copy "
                     "under another file name, and functions looked up with dlsym (tested: "
                     "reach/*); libmariadb the same way, untested\n", path);
#else
        fprintf(out, "  depends: %s links neither libpq nor hiredis nor a MySQL client library "
                     "but loads libraries at run time (dlopen). lastcall sees libpq and hiredis "
                     "loaded in a local scope or as a bundled copy under another file name; on "
                     LC_ARCH_NAME " it does not see those loaded with RTLD_DEEPBIND nor "
                     "functions looked up with dlsym (x86-64 and aarch64 only)\n", path);
#endif
        return DOCTOR_DEPENDS;
    }
    fprintf(out, "  no: %s links neither libpq nor hiredis nor a MySQL client library and "
                 "cannot load them at run time (it does not call dlopen)\n", path);
    return DOCTOR_NO;
}

int doctor_run(const char *cmd, FILE *out)
{
    char path[PATH_MAX];
    if (doctor_resolve(cmd, path, sizeof path) != 0) {
        fprintf(out, "lastcall doctor: %s: command not found\n", cmd);
        return DOCTOR_NOT_FOUND;
    }
    fprintf(out, "lastcall doctor: %s\n", path);
#if !(LC_ARCH_DL_STUBS && LC_ARCH_GOT)
    fprintf(out, "  platform: %s: lastcall answers no dlsym lookup and rewrites no GOT here "
                 "(x86-64 and aarch64 only): FFI callers (ctypes) and RTLD_DEEPBIND libraries "
                 "(PHP) are not seen\n", LC_ARCH_NAME);
#endif
    int verdict = analyse(path, out, 0);
    report_signals(out);
    static const char *words[] = {"lastcall will see its connections",
                                  "lastcall will not see its connections", "not found",
                                  "it depends on the drivers the program loads"};
    fprintf(out, "verdict: %s\n", words[verdict]);
    return verdict;
}
