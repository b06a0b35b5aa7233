/* The process's state every layer reads (process.h). */
#define _GNU_SOURCE
#include "core/process.h"

#include <stdint.h>
#include <string.h>
#include <sys/auxv.h>
#include <unistd.h>

#include "core/compiler.h"
#include "core/log.h"

struct lc_config lc_cfg;
int lc_initialized;
__thread int lc_depth __attribute__((tls_model("initial-exec")));
__thread int lc_forking __attribute__((tls_model("initial-exec")));

static int has_forked; /* a child may hold our sockets too */

/* The LASTCALL_* entries of the environment, found in one pass: a getenv
 * per setting scanned the whole environment once each, in every process
 * that loads us (a shell, /bin/true). */
#define ENV_MAX 32
static const char *env_entries[ENV_MAX];
static int env_count;

LC_STARTUP static void collect_environment(void)
{
    /* A setuid/setgid program ignores the environment's settings, as
     * secure_getenv would. */
    if (getauxval(AT_SECURE))
        return;
    /* "LASTCALL_" as immediates, not a string literal: a process without
     * any LASTCALL_ variable then reads none of our read-only data, whose
     * first touch maps all of it (the kernel's 64 KiB fault-around). */
    const uint64_t lastcall = 0x4c4c41435453414cull; /* "LASTCALL", little-endian */
    for (char **e = environ; e && *e && env_count < ENV_MAX; e++) {
        uint64_t head;
        if (strnlen(*e, 9) < 9)
            continue;
        memcpy(&head, *e, sizeof head);
        if (head == lastcall && (*e)[8] == '_')
            env_entries[env_count++] = *e;
    }
}

static const char *env_lookup(const char *name)
{
    if (env_count == 0)
        return NULL;
    size_t len = strlen(name);
    for (int i = 0; i < env_count; i++)
        if (strncmp(env_entries[i], name, len) == 0 && env_entries[i][len] == '=')
            return env_entries[i] + len + 1;
    return NULL;
}

LC_STARTUP void process_load_config(void)
{
    collect_environment();
    config_load(&lc_cfg, env_lookup, lc_log_complaint);
    lc_log_setup(&lc_cfg);
}

int process_has_forked(void)
{
    return __atomic_load_n(&has_forked, __ATOMIC_RELAXED);
}

void process_set_forked(void)
{
    __atomic_store_n(&has_forked, 1, __ATOMIC_RELAXED);
}
