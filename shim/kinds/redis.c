/* Interposition of hiredis (0.14 and 1.x): connects, frees, commands (for the
 * gate and in-flight tracking), and how a Redis connection is closed. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "track/inflight.h"
#include "track/kind.h"
#include "core/compiler.h"
#include "core/kind_id.h"
#include "core/log.h"
#include "core/registry.h"
#include "core/process.h"
#include "platform/symbols.h"

/* hiredis 1.x's timer call, declared for 0.14's headers (the hook answers as
 * a no-op where the real library lacks it). */
void redisAsyncHandleTimeout(redisAsyncContext *ac);

/* Every hiredis function this file calls outside the hooks' own real calls,
 * resolved at the first tracked connect (see kinds.h): the drain only reads
 * the caches. The drain calls only redisBufferWrite, which runs no callback
 * of the program's (an async context's callbacks run from
 * redisAsyncHandleRead/Write, redisProcessCallbacks and the frees, none of
 * which lastcall calls). */
#define RD_REALS(X) X(redisBufferWrite) X(redisvCommand) X(redisvAppendCommand) X(redisvAsyncCommand)
#define RD_REAL_INDEX(fn) rdr_##fn,
enum { RD_REALS(RD_REAL_INDEX) rdr_count };
static const char *const rd_real_names[] = {RD_REALS(LC_REALS_NAME)};
static void *rd_real_cache[rdr_count];
static struct lc_lib rd_lib = {.defines = {"redisConnect", "redisFree"},
                               .hook_prefixes = {"redis"}};
/* hiredis 1.x's TLS library, beside libhiredis. */
static struct lc_lib rd_ssl_lib = {.defines = {"redisInitiateSSL", "redisCreateSSLContext"}};
static struct lc_reals rd_reals = {&rd_lib, rdr_count, rd_real_names, rd_real_cache, 0};
#define RD(fn) ((__typeof__(&fn))lc_real(&rd_real_cache[rdr_##fn], &rd_reals, rdr_##fn))
#define RD_HOOKED(name) HOOKED_REAL_IN(&rd_lib, name)

/* The options-struct connects exist only in hiredis 1.x. Against 0.14's
 * headers they are declared here with an opaque type; against 1.x's, the
 * headers' own declarations (const redisOptions *) are used as they are. */
#if defined(HIREDIS_MAJOR) && HIREDIS_MAJOR >= 1
typedef redisOptions lc_redis_options;
#else
typedef void lc_redis_options;
redisContext *redisConnectWithOptions(const lc_redis_options *options);
redisAsyncContext *redisAsyncConnectWithOptions(const lc_redis_options *options);
#endif

/* ---- redisContext fields, by version ----
 * 0.14: int err; char errstr[128]; int fd; int flags; ...   -> fd at 132
 * 1.x:  const void *funcs; int err; char errstr[128]; int fd; int flags; -> fd at 140
 * The sync context is the first member of the async one, so the same offsets
 * serve redisAsyncContext pointers. */
/* hiredis 1.x added a pointer before `fd` in redisContext. */
enum { LC_HIREDIS_UNKNOWN = 0, LC_HIREDIS_0 = 1, LC_HIREDIS_1 = 2 };
static int hiredis_layout(void)
{
    static int layout;
    int l = __atomic_load_n(&layout, __ATOMIC_ACQUIRE);
    if (l)
        return l;
    /* redisConnectWithOptions exists only in hiredis 1.x; so does the funcs
     * pointer that moves every later field of redisContext by 8 bytes. */
    if (sym_lookup(&rd_lib, "redisFree", NULL) == NULL)
        return LC_HIREDIS_UNKNOWN;
    l = sym_lookup(&rd_lib, "redisConnectWithOptions", NULL) ? LC_HIREDIS_1 : LC_HIREDIS_0;
    __atomic_store_n(&layout, l, __ATOMIC_RELEASE);
    return l;
}

static int redis_fd_offset(void)
{
    switch (hiredis_layout()) {
    case LC_HIREDIS_0:
        return 132;
    case LC_HIREDIS_1:
        return 140;
    default:
        return -1;
    }
}

static int redis_context_fd(const void *ctx)
{
    int off = redis_fd_offset();
    if (ctx == NULL || off < 0)
        return -1;
    int fd;
    memcpy(&fd, (const char *)ctx + off, sizeof fd);
    return fd;
}

static int redis_context_err(const void *ctx)
{
    int err;
    memcpy(&err, (const char *)ctx + (hiredis_layout() == LC_HIREDIS_1 ? 8 : 0), sizeof err);
    return err;
}

/* The kind's entry in the kind table, at the end of this file. */
extern const struct lc_kind lc_redis_kind;

/* ---- connect path ---- */

static void redis_track(void *ctx, int is_async, const char *target)
{
    if (ctx == NULL)
        return;
    lc_reals_resolve(&rd_reals);
    lc_track_connect(lc_kind_id(&lc_redis_kind), ctx, is_async, redis_context_err(ctx) != 0,
                     redis_context_fd(ctx), target, NULL, 0);
}

/* Plain copies, not snprintf: these run on every connect. */
static size_t copy_str(char *out, size_t size, const char *s)
{
    size_t len = strnlen(s ? s : "?", size - 1);
    memcpy(out, s ? s : "?", len);
    out[len] = '\0';
    return len;
}

static void target_tcp(char *out, size_t size, const char *ip, int port)
{
    size_t len = copy_str(out, size - 8, ip);
    char digits[12];
    int n = 0;
    unsigned p = port < 0 ? 0u : (unsigned)port;
    do
        digits[n++] = (char)('0' + p % 10);
    while ((p /= 10) && n < 11);
    out[len++] = ':';
    while (n > 0)
        out[len++] = digits[--n];
    out[len] = '\0';
}

static void target_unix(char *out, size_t size, const char *path)
{
    copy_str(out, size, path);
}

/* redisOptions (1.x): int type; int options; two timeval pointers; then the
 * endpoint union { struct { source_addr, ip, port } tcp; unix_socket; fd }. */
static void target_options(char *out, size_t size, const void *options)
{
    if (options == NULL) {
        snprintf(out, size, "?");
        return;
    }
    const char *base = options;
    int type;
    memcpy(&type, base, sizeof type);
    const char *ip = NULL, *path = NULL;
    int port = 0, fd = -1;
    switch (type) {
    case 0:
        memcpy(&ip, base + 32, sizeof ip);
        memcpy(&port, base + 40, sizeof port);
        target_tcp(out, size, ip, port);
        break;
    case 1:
        memcpy(&path, base + 24, sizeof path);
        target_unix(out, size, path);
        break;
    case 2:
        memcpy(&fd, base + 24, sizeof fd);
        snprintf(out, size, "fd:%d", fd);
        break;
    default:
        snprintf(out, size, "?");
    }
}

/* While draining: an exit drain fails a new connection the way a missing
 * server would; a signal drain parks the thread. */
static redisContext *redis_refused(void)
{
    gate_wait(); /* a signal drain parks the thread for good, see pq_refused */
    redisContext *(*real)(const char *) = RD_HOOKED(redisConnectUnix);
    if (real == NULL)
        return NULL;
    lc_depth++;
    redisContext *c = real("/lastcall: process is shutting down");
    lc_depth--;
    return c;
}

static redisAsyncContext *redis_async_refused(void)
{
    gate_wait();
    redisAsyncContext *(*real)(const char *) = RD_HOOKED(redisAsyncConnectUnix);
    if (real == NULL)
        return NULL;
    lc_depth++;
    redisAsyncContext *c = real("/lastcall: process is shutting down");
    lc_depth--;
    return c;
}

#define REDIS_CONNECT_HOOK(...) REDIS_CONNECT_HOOK_(__VA_ARGS__)
#define REDIS_CONNECT_HOOK_(type, is_async, refuse, name, params, args, describe)             \
    LC_CONNECT_HOOK(RD_HOOKED, type *, name, params, args, refuse(), {                         \
        char target[LC_TARGET_MAX];                                                            \
        describe;                                                                              \
        redis_track(h, is_async, target);                                                      \
    })

#define SYNC redisContext, 0, redis_refused
#define ASYNC redisAsyncContext, 1, redis_async_refused
#define TCP target_tcp(target, sizeof target, ip, port)
#define UNIX target_unix(target, sizeof target, path)

REDIS_CONNECT_HOOK(SYNC, redisConnect, (const char *ip, int port), (ip, port), TCP)
REDIS_CONNECT_HOOK(SYNC, redisConnectWithTimeout,
                   (const char *ip, int port, const struct timeval tv), (ip, port, tv), TCP)
REDIS_CONNECT_HOOK(SYNC, redisConnectNonBlock, (const char *ip, int port), (ip, port), TCP)
REDIS_CONNECT_HOOK(SYNC, redisConnectBindNonBlock,
                   (const char *ip, int port, const char *source_addr),
                   (ip, port, source_addr), TCP)
REDIS_CONNECT_HOOK(SYNC, redisConnectBindNonBlockWithReuse,
                   (const char *ip, int port, const char *source_addr),
                   (ip, port, source_addr), TCP)
REDIS_CONNECT_HOOK(SYNC, redisConnectUnix, (const char *path), (path), UNIX)
REDIS_CONNECT_HOOK(SYNC, redisConnectUnixWithTimeout,
                   (const char *path, const struct timeval tv), (path, tv), UNIX)
REDIS_CONNECT_HOOK(SYNC, redisConnectUnixNonBlock, (const char *path), (path), UNIX)
REDIS_CONNECT_HOOK(SYNC, redisConnectFd, (int fd), (fd),
                   snprintf(target, sizeof target, "fd:%d", fd))
REDIS_CONNECT_HOOK(SYNC, redisConnectWithOptions, (const lc_redis_options *options), (options),
                   target_options(target, sizeof target, options))
REDIS_CONNECT_HOOK(ASYNC, redisAsyncConnect, (const char *ip, int port), (ip, port), TCP)
REDIS_CONNECT_HOOK(ASYNC, redisAsyncConnectBind,
                   (const char *ip, int port, const char *source_addr),
                   (ip, port, source_addr), TCP)
REDIS_CONNECT_HOOK(ASYNC, redisAsyncConnectBindWithReuse,
                   (const char *ip, int port, const char *source_addr),
                   (ip, port, source_addr), TCP)
REDIS_CONNECT_HOOK(ASYNC, redisAsyncConnectUnix, (const char *path), (path), UNIX)
REDIS_CONNECT_HOOK(ASYNC, redisAsyncConnectWithOptions, (const lc_redis_options *options), (options),
                   target_options(target, sizeof target, options))

/* hiredis_ssl (1.x) starts TLS on an already tracked context. OpenSSL
 * registers its exit cleanup at its first use, which may come after our
 * first connect (a plain TCP connection first, TLS later): our exit drain must
 * go on the atexit list again, after OpenSSL's, or it would write through an
 * SSL object OpenSSL already tore down. The SSL types are opaque here. */
int redisInitiateSSL(redisContext *c, void *ssl);
int redisInitiateSSLWithContext(redisContext *c, void *redis_ssl_ctx);

#define REDIS_SSL_HOOK(name, argtype)                                                          \
    LC_EXPORT int name(redisContext *c, argtype arg)                                           \
    {                                                                                          \
        int (*real)(redisContext *, argtype) = HOOKED_REAL_IN(&rd_ssl_lib, name);       \
        if (LC_UNLIKELY(real == NULL))                                                         \
            return REDIS_ERR;                                                                  \
        int r = real(c, arg);                                                                  \
        if (r == REDIS_OK && lc_depth == 0 && lc_active())                                     \
            lc_up.on_connect(1);                                                             \
        return r;                                                                              \
    }

REDIS_SSL_HOOK(redisInitiateSSL, void *)
REDIS_SSL_HOOK(redisInitiateSSLWithContext, void *)

LC_EXPORT int redisReconnect(redisContext *c)
{
    int (*real)(redisContext *) = RD_HOOKED(redisReconnect);
    if (LC_UNLIKELY(real == NULL))
        return REDIS_ERR;
    if (lc_depth > 0 || !lc_active() || c == NULL)
        return real(c);
    INFLIGHT_ENTER(c);
    lc_depth++;
    int r = real(c);
    lc_depth--;
    registry_update(c, redis_context_err(c) != 0, redis_context_fd(c), NULL, NULL);
    INFLIGHT_LEAVE(c);
    return r;
}

/* redisFree, redisFreeKeepFd, redisAsyncFree: hiredis calls redisFree from
 * the other two with the same pointer (the sync context is the async one's
 * first member), so the nesting guard makes each free count once. The real
 * frees, in the one shape runtime_free_tracked takes: */
static int real_free(void *c)
{
    void (*real)(redisContext *) = RD_HOOKED(redisFree);
    if (real)
        real(c);
    return 0;
}

static int real_async_free(void *ac)
{
    void (*real)(redisAsyncContext *) = RD_HOOKED(redisAsyncFree);
    if (real)
        real(ac);
    return 0;
}

static int real_free_keepfd(void *c)
{
    int (*real)(redisContext *) = RD_HOOKED(redisFreeKeepFd);
    return real ? real(c) : -1;
}

static int redis_free_tracked(void *ctx, int (*do_free)(void *))
{
    if (ctx == NULL || lc_depth > 0)
        return do_free(ctx);
    struct lc_entry info;
    int tracked;
    return lc_up.free_tracked(ctx, do_free, &info, &tracked);
}

LC_EXPORT void redisFree(redisContext *c)
{
    redis_free_tracked(c, real_free);
}

LC_EXPORT int redisFreeKeepFd(redisContext *c)
{
    lc_free_keeps_fd = 1;
    int fd = redis_free_tracked(c, real_free_keepfd);
    lc_free_keeps_fd = 0;
    return fd;
}

LC_EXPORT void redisAsyncFree(redisAsyncContext *ac)
{
    redis_free_tracked(ac, real_async_free);
}

/* ---- command path ---- */

#define REDIS_CALL_HOOK(ret, failval, name, ctx, params, args)                                 \
    LC_TRACKED_CALL_HOOK(RD_HOOKED, ret, failval, name, ctx, params, args)



#define REDIS_VOID_HOOK(name, ctx, params, args)                                               \
    LC_EXPORT void name params                                                                 \
    {                                                                                          \
        void (*real) params = RD_HOOKED(name);                                                 \
        if (LC_UNLIKELY(real == NULL))                                                         \
            return;                                                                            \
        INFLIGHT_CALL(ctx, real args);                                                         \
    }

REDIS_CALL_HOOK(void *, NULL, redisvCommand, c, (redisContext *c, const char *format, va_list ap),
                (c, format, ap))
REDIS_CALL_HOOK(void *, NULL, redisCommandArgv, c,
                (redisContext *c, int argc, const char **argv, const size_t *argvlen),
                (c, argc, argv, argvlen))
REDIS_CALL_HOOK(int, REDIS_ERR, redisvAppendCommand, c,
                (redisContext *c, const char *format, va_list ap), (c, format, ap))
REDIS_CALL_HOOK(int, REDIS_ERR, redisAppendCommandArgv, c,
                (redisContext *c, int argc, const char **argv, const size_t *argvlen),
                (c, argc, argv, argvlen))
REDIS_CALL_HOOK(int, REDIS_ERR, redisAppendFormattedCommand, c,
                (redisContext *c, const char *cmd, size_t len), (c, cmd, len))
REDIS_CALL_HOOK(int, REDIS_ERR, redisGetReply, c, (redisContext *c, void **reply), (c, reply))
REDIS_CALL_HOOK(int, REDIS_ERR, redisBufferWrite, c, (redisContext *c, int *done), (c, done))
REDIS_CALL_HOOK(int, REDIS_ERR, redisBufferRead, c, (redisContext *c), (c))
REDIS_CALL_HOOK(int, REDIS_ERR, redisvAsyncCommand, ac,
                (redisAsyncContext *ac, redisCallbackFn *fn, void *privdata, const char *format,
                 va_list ap),
                (ac, fn, privdata, format, ap))
REDIS_CALL_HOOK(int, REDIS_ERR, redisAsyncCommandArgv, ac,
                (redisAsyncContext *ac, redisCallbackFn *fn, void *privdata, int argc,
                 const char **argv, const size_t *argvlen),
                (ac, fn, privdata, argc, argv, argvlen))
REDIS_CALL_HOOK(int, REDIS_ERR, redisAsyncFormattedCommand, ac,
                (redisAsyncContext *ac, redisCallbackFn *fn, void *privdata, const char *cmd,
                 size_t len),
                (ac, fn, privdata, cmd, len))
REDIS_VOID_HOOK(redisAsyncHandleRead, ac, (redisAsyncContext *ac), (ac))
REDIS_VOID_HOOK(redisAsyncHandleWrite, ac, (redisAsyncContext *ac), (ac))
REDIS_VOID_HOOK(redisAsyncDisconnect, ac, (redisAsyncContext *ac), (ac))
REDIS_VOID_HOOK(redisAsyncHandleTimeout, ac, (redisAsyncContext *ac), (ac))

/* The variadic entry points forward to their va_list twins in the real library. */
LC_EXPORT void *redisCommand(redisContext *c, const char *format, ...)
{
    void *(*real)(redisContext *, const char *, va_list) = RD(redisvCommand);
    if (LC_UNLIKELY(real == NULL))
        return NULL;
    va_list ap;
    va_start(ap, format);
    void *r;
    INFLIGHT_CALL(c, r = real(c, format, ap));
    va_end(ap);
    return r;
}

LC_EXPORT int redisAppendCommand(redisContext *c, const char *format, ...)
{
    int (*real)(redisContext *, const char *, va_list) = RD(redisvAppendCommand);
    if (LC_UNLIKELY(real == NULL))
        return REDIS_ERR;
    va_list ap;
    va_start(ap, format);
    int r;
    INFLIGHT_CALL(c, r = real(c, format, ap));
    va_end(ap);
    return r;
}

LC_EXPORT int redisAsyncCommand(redisAsyncContext *ac, redisCallbackFn *fn, void *privdata,
                                const char *format, ...)
{
    int (*real)(redisAsyncContext *, redisCallbackFn *, void *, const char *, va_list) =
        RD(redisvAsyncCommand);
    if (LC_UNLIKELY(real == NULL))
        return REDIS_ERR;
    va_list ap;
    va_start(ap, format);
    int r;
    INFLIGHT_CALL(ac, r = real(ac, fn, privdata, format, ap));
    va_end(ap);
    return r;
}

/* ---- drain operations ---- */

static int redis_socket_fd(struct lc_entry *e)
{
    int fd = redis_context_fd(e->handle);
    /* The offset is a guess about someone else's struct: trust it only if it
     * names the socket we saw on the connect path. */
    if (fd < 0 || fd != e->fd)
        return -1;
    return fd;
}

/* Length of the context's output buffer, an sds string: its header, just
 * before the characters, is typed by the low bits of the byte before them.
 * obuf follows fd and flags, 8-byte aligned: 144 in 0.14, 152 in 1.x. */
static size_t redis_obuf_len(const void *ctx)
{
    int off = redis_fd_offset();
    if (off < 0)
        return 0;
    const unsigned char *s;
    memcpy(&s, (const char *)ctx + ((off + 8 + 7) & ~7), sizeof s);
    if (s == NULL)
        return 0;
    unsigned char type = s[-1] & 7;
    switch (type) {
    case 0: /* sdshdr5: length in the flags byte */
        return s[-1] >> 3;
    case 1:
        return s[-3];
    case 2: {
        uint16_t len;
        memcpy(&len, s - 5, sizeof len);
        return len;
    }
    case 3: {
        uint32_t len;
        memcpy(&len, s - 9, sizeof len);
        return len;
    }
    case 4: {
        uint64_t len;
        memcpy(&len, s - 17, sizeof len);
        return (size_t)len;
    }
    default:
        return 1; /* not an sds we know: let redisBufferWrite decide */
    }
}

static int redis_flush(struct lc_entry *e, int fd, int64_t until_ms)
{
    (void)until_ms; /* never blocks: the socket is made non-blocking */
    if (redis_context_err(e->handle) != 0)
        return LC_FLUSH_GIVE_UP;
    if (redis_obuf_len(e->handle) == 0)
        return LC_FLUSH_NOTHING;
    int (*buffer_write)(redisContext *, int *) = RD(redisBufferWrite);
    if (buffer_write == NULL)
        return LC_FLUSH_GIVE_UP;
    lc_set_nonblocking(fd);
    /* redisBufferWrite treats EAGAIN as fatal on a blocking context: clear
     * REDIS_BLOCK (flags sits right after fd) so a full socket means "later". */
    int off = redis_fd_offset() + (int)sizeof(int);
    int flags;
    memcpy(&flags, (char *)e->handle + off, sizeof flags);
    flags &= ~REDIS_BLOCK;
    memcpy((char *)e->handle + off, &flags, sizeof flags);
    int done = 0;
    if (buffer_write(e->handle, &done) != REDIS_OK)
        return LC_FLUSH_GIVE_UP;
    return done ? LC_FLUSH_WROTE : LC_FLUSH_MORE;
}

/* Over a unix socket, our goodbye is only a FIN once the server has read
 * everything we sent (SIOCOUTQ 0 there counts unread bytes): the kernel's
 * close at exit is the same FIN, and redis-server logs nothing for either.
 * Not over TCP, where only the server's EOF proves it read everything (a
 * close with its reply still coming is a reset, and a reset drops what the
 * server had not read), and not while subscribed (pushes may come at any
 * moment, and unread at our close they would make it a reset). */
static int redis_nothing_to_say(struct lc_entry *e, int fd)
{
    if (redis_context_err(e->handle) != 0 || redis_obuf_len(e->handle) != 0)
        return 0;
    int flags;
    memcpy(&flags, (const char *)e->handle + redis_fd_offset() + (int)sizeof(int), sizeof flags);
    if (flags & REDIS_SUBSCRIBED)
        return 0;
    /* A unix socket: its path as the target (redisConnectUnix), or asked. */
    if (e->target[0] != '/') {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0 || ss.ss_family != AF_UNIX)
            return 0;
    }
    int unread_by_server = 0;
    return ioctl(fd, SIOCOUTQ, &unread_by_server) == 0 && unread_by_server == 0;
}

const struct lc_kind lc_redis_kind = {
    .name = "Redis",
    .lib = &rd_lib,
    .json = "redis",
    .always_listed = 1,
    .goodbye_wait = LC_GOODBYE_READ,
    .socket_fd = redis_socket_fd,
    .server_busy = NULL,
    .cancel = NULL,
    .flush = redis_flush,
    .terminate = NULL,
    .nothing_to_say = redis_nothing_to_say,
};
