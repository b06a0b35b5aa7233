/* A plugin whose constructor takes a while (standing in for I/O), as
 * plugin loaders meet them: ld.so holds its load lock meanwhile. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

__attribute__((constructor)) static void slow_ctor(void)
{
    /* HANG_CTOR_US: how long (default 3 s); the hang search loads it often. */
    const char *us = getenv("HANG_CTOR_US");
    long n = us ? atol(us) : 3000000;
    if (!us) {
        static const char msg[] = "in-constructor\n";
        (void)!write(1, msg, sizeof msg - 1);
    }
    struct timespec ts = {n / 1000000, (n % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

int slow_ctor_plugin_loaded(void)
{
    return 1;
}
