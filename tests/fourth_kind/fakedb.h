/* FakeDB: a throwaway client library of two functions, for the test that a
 * fourth kind of connection touches its own file and one line of the kind
 * table (tests/fourth_kind/README.md). Its protocol: "HELLO\n" on connect,
 * "BYE\n" before a close. */
#ifndef FAKEDB_H
#define FAKEDB_H

struct fakedb {
    int fd;
};

/* Connects to the unix socket at PATH; NULL on failure. */
struct fakedb *fakedb_connect(const char *path);
/* Says BYE, closes, frees. */
void fakedb_close(struct fakedb *db);

#endif
