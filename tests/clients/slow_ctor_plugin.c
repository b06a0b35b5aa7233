/* A plugin whose constructor takes a while (standing in for I/O), as
 * plugin loaders meet them: ld.so holds its load lock meanwhile. */
#include <stdio.h>
#include <time.h>
#include <unistd.h>

__attribute__((constructor)) static void slow_ctor(void)
{
    static const char msg[] = "in-constructor\n";
    (void)!write(1, msg, sizeof msg - 1);
    struct timespec ts = {3, 0};
    nanosleep(&ts, NULL);
}

int slow_ctor_plugin_loaded(void)
{
    return 1;
}
