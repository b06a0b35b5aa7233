/* A fourth kind of connection, FakeDB (fakedb.h), in one file: the proof
 * that a new kind touches its own file and one line of the kind table
 * (runtime/kind_table.c), nothing else. tests/fourth_kind/meson.build builds
 * the library with this file and the table plus one line. */
#define _GNU_SOURCE
#include <errno.h>
#include <unistd.h>

#include "fakedb.h"

#include "core/compiler.h"
#include "core/process.h"
#include "core/registry.h"
#include "platform/symbols.h"
#include "track/inflight.h"
#include "track/kind.h"

static struct lc_lib fakedb_lib = {.defines = {"fakedb_connect", "fakedb_close"},
                                   .hook_prefixes = {"fakedb_"}};
#define FAKEDB_HOOKED(name) HOOKED_REAL_IN(&fakedb_lib, name)

extern const struct lc_kind lc_fakedb_kind;

static void fakedb_track(struct fakedb *db, const char *path)
{
    if (db)
        lc_track_connect(lc_kind_id(&lc_fakedb_kind), db, 0, 0, db->fd, path, NULL, 0);
}

LC_CONNECT_HOOK(FAKEDB_HOOKED, struct fakedb *, fakedb_connect, (const char *path), (path),
                NULL, fakedb_track(h, path))

static int real_close(void *db)
{
    void (*real)(struct fakedb *) = FAKEDB_HOOKED(fakedb_close);
    if (real)
        real(db);
    return 0;
}

LC_EXPORT void fakedb_close(struct fakedb *db)
{
    if (db == NULL || lc_depth > 0) {
        real_close(db);
        return;
    }
    struct lc_entry info;
    int tracked;
    lc_up.free_tracked(db, real_close, &info, &tracked);
}

/* ---- how a FakeDB connection closes: "BYE\n", and nothing to wait for ---- */

static int fakedb_socket_fd(struct lc_entry *e)
{
    return e->failed ? -1 : ((struct fakedb *)e->handle)->fd;
}

static int fakedb_flush(struct lc_entry *e, int fd, int64_t until_ms)
{
    (void)e, (void)fd, (void)until_ms;
    return LC_FLUSH_NOTHING;
}

static void fakedb_terminate(struct lc_entry *e, int fd)
{
    (void)e;
    lc_set_nonblocking(fd);
    if (write(fd, "BYE\n", 4) != 4) {
        /* the server is gone: the close says the rest */
    }
}

const struct lc_kind lc_fakedb_kind = {
    .name = "FakeDB",
    .lib = &fakedb_lib,
    .json = "fakedb",
    .goodbye_wait = LC_GOODBYE_DONE,
    .socket_fd = fakedb_socket_fd,
    .flush = fakedb_flush,
    .terminate = fakedb_terminate,
};
