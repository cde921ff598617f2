/*
 * imgtool: setjmp.h for wasm32-wasi, which has none (no stack unwinding in
 * WebAssembly without the exception-handling proposal).
 *
 * configure is told there is no setjmp.h (ac_cv_header_setjmp_h=no), so
 * e2fsck's abort path does not use it. The only remaining user we build is
 * misc/util.c's proceed_question() timeout, which imgtool never reaches
 * (it always answers via options, and alarm() is a no-op). setjmp returns 0;
 * a longjmp would be a bug, so it aborts loudly instead of misbehaving.
 */
#ifndef IMGTOOL_WASI_SETJMP_H
#define IMGTOOL_WASI_SETJMP_H
#include <stdlib.h>
typedef long jmp_buf[1];
#define setjmp(env) ((void)(env), 0)
static inline void __attribute__((noreturn)) longjmp(jmp_buf env, int val)
{
	(void)env; (void)val;
	abort();
}
#endif
