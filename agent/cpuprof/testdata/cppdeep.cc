// cppdeep burns CPU in C++ built without frame pointers: a function
// template whose accumulator's methods are inlined templates, called from
// a function that catches exceptions, next to one that throws and catches
// one on every round (so the unwinding tables hold landing pads and the
// C++ runtime's unwinder runs for real).
#include <stdexcept>

volatile unsigned long sink;

namespace loupe {
template <typename T> struct Accumulator {
	T v{};
	void add(T x) { v += x * x + (x >> 3); }
	bool odd() const { return v & 1; }
};

template <typename T> __attribute__((noinline)) T crunch(T n)
{
	Accumulator<T> acc;
	for (T i = 0; i < n; i++) {
		acc.add(i);
		if (acc.v == 42)
			throw std::runtime_error("unlucky");
	}
	return acc.v + acc.odd();
}
} // namespace loupe

__attribute__((noinline)) void work()
{
	try {
		sink += loupe::crunch<unsigned long>(20000000UL);
	} catch (const std::exception &) {
		sink++;
	}
}

__attribute__((noinline)) void throw_one()
{
	try {
		throw std::runtime_error("boom");
	} catch (const std::exception &e) {
		sink += e.what()[0];
	}
}

int main()
{
	for (;;) {
		work();
		throw_one();
	}
}
