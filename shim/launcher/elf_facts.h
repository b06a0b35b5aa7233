/* What lastcall doctor reads from a program's ELF file: its loader, the
 * libraries it needs, whether it loads more at run time. */
#ifndef LC_ELF_FACTS_H
#define LC_ELF_FACTS_H

#include <stddef.h>

/* The client libraries lastcall interposes, by file name: libpq, hiredis,
 * the MySQL client (MariaDB Connector/C, Oracle's libmysqlclient). */
enum { LIB_PQ, LIB_HIREDIS, LIB_MYSQL, N_LIBS };

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


void read_elf(const char *path, struct elf_facts *f);
int has_prefix_lib(const char *name, const char *prefix);
int which_lib(const char *name);
void join_libs(const int *found, const char *mysql_name, char *out, size_t size);
void shell_quote(const char *s, char *q, size_t size);
void transitive_libs(const char *interp, const char *path, int *found, char *via,
                            size_t via_size);

#endif
