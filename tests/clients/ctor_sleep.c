/* A plugin whose constructor takes a while (standing in for I/O), as
 * ld.so runs it: with its load lock held (issue 19, case 2). */
#include <time.h>

__attribute__((constructor)) static void slow_start(void)
{
    struct timespec t = {0, 200 * 1000 * 1000};
    nanosleep(&t, NULL);
}

int ctor_sleep_loaded(void)
{
    return 1;
}
