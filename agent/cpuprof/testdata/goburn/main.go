// Command goburn spins in main.burnGo until killed; the cpuprof tests
// profile it, plain and stripped.
package main

var sink int

//go:noinline
func burnGo(n int) int {
	x := 0
	for i := 0; i < n; i++ {
		x += i*i ^ x
	}
	return x
}

func main() {
	for {
		sink += burnGo(1 << 20)
	}
}
