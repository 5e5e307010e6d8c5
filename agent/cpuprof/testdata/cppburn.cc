// cppburn spins in loupe::Burner::burn (a mangled C++ name) until killed.
volatile unsigned long sink;

namespace loupe {
struct Burner {
	__attribute__((noinline)) void burn(unsigned long n);
};

void Burner::burn(unsigned long n)
{
	for (unsigned long i = 0; i < n; i++)
		sink += i * i;
}
} // namespace loupe

int main()
{
	loupe::Burner b;
	for (;;)
		b.burn(100000000UL);
}
