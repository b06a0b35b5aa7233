/* A plugin whose constructor takes its time (I/O, a feature probe): dlopen
 * holds the loader's lock meanwhile (tests/integration/test_callbacks.c). */
#include <stdio.h>
#include <unistd.h>

__attribute__((constructor)) static void slow_start(void)
{
    printf("in constructor\n");
    fflush(stdout);
    sleep(5);
}
