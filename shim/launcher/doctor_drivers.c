#define _GNU_SOURCE
#include "launcher/doctor_drivers.h"
#include "launcher/elf_facts.h"
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
int interpreter_drivers(const char *path, const char *base, FILE *out)
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
