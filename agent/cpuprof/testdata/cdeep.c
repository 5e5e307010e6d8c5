// cdeep burns CPU three noinline calls deep (deep_outer -> deep_middle ->
// deep_inner) for the unwinding tests, which build it with -O2
// -fomit-frame-pointer so that frame pointers cannot find the callers.
//   cdeep            burns until killed
//   cdeep MS         burns for MS milliseconds, then exits
#include <stdlib.h>
#include <time.h>

volatile unsigned long sink;

// Work after each call keeps the calls from becoming tail jumps; the
// local buffers give every frame a stack adjustment of its own.
__attribute__((noinline, noclone)) void deep_inner(void)
{
	volatile char pad[48];
	pad[0] = 1;
	for (unsigned long i = 0; i < 20000000UL; i++)
		sink += i * i + pad[0];
}

__attribute__((noinline, noclone)) void deep_middle(void)
{
	volatile char pad[80];
	pad[0] = 2;
	deep_inner();
	sink += pad[0];
}

__attribute__((noinline, noclone)) void deep_outer(void)
{
	volatile char pad[16];
	pad[0] = 3;
	deep_middle();
	sink += pad[0];
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
	double until = argc > 1 ? now_ms() + atof(argv[1]) : 0;
	while (!until || now_ms() < until)
		deep_outer();
	return 0;
}
