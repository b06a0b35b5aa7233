/* An empty preloadable library: the start-up benchmark's baseline, so the
 * figure is what lastcall costs beyond preloading anything at all. */
int lastcall_bench_empty_preload;
