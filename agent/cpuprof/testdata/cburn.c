// cburn burns CPU in a known way until killed, for the cpuprof tests:
//   cburn burn  spins in burn_c
//   cburn sys   reads /dev/zero in a loop (time in the kernel)
//   cburn jit   copies a spinning loop into anonymous executable memory,
//               prints "ADDRESS SIZE" in hex and runs it (a stand-in JIT)
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

volatile unsigned long sink;

__attribute__((noinline)) void burn_c(void)
{
	for (unsigned long i = 0; i < 100000000UL; i++)
		sink += i * i;
}

__attribute__((noinline)) void read_dev_zero(int fd)
{
	static char buf[1 << 16];
	if (read(fd, buf, sizeof buf) < 0)
		exit(1);
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "burn";
	if (!strcmp(mode, "burn"))
		for (;;)
			burn_c();
	if (!strcmp(mode, "sys")) {
		int fd = open("/dev/zero", O_RDONLY);
		if (fd < 0)
			return 1;
		for (;;)
			read_dev_zero(fd);
	}
	if (!strcmp(mode, "jit")) {
		// push rbp; mov rbp, rsp; loop: inc rax; jmp loop
		static const unsigned char code[] = {0x55, 0x48, 0x89, 0xe5, 0x48, 0xff, 0xc0, 0xeb, 0xfb};
		unsigned char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
					MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return 1;
		memcpy(p, code, sizeof code);
		printf("%lx %zx\n", (unsigned long)p, sizeof code);
		fflush(stdout);
		((void (*)(void))p)();
	}
	return 2;
}
