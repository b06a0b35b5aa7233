/* The composition root (runtime.c): the run-once init. The root's other
 * files each have their header; no lower layer includes any of them: they
 * reach up through core/upcalls.h and the signals' sink, which runtime.c
 * fills in. */
#ifndef LC_RUNTIME_H
#define LC_RUNTIME_H

void runtime_init(void);

#endif
