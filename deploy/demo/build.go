package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// binaries are what the demo builds into its folder.
type binaries struct {
	agent, aggregator string
	// lib is the stand-in libnccl.so.2; train the workload linked to it.
	lib, train string
}

// errNoGCC says what to install; the test fails with it under CI.
var errNoGCC = errors.New("gcc not found: the demo builds its stand-in libnccl and the synthetic training job with it; install it (Debian/Ubuntu: apt-get install gcc)")

// build compiles the agent and the aggregator with the go command that is
// on PATH, and the stand-in libnccl and the workload with gcc, into dir.
func build(ctx context.Context, root, dir string) (binaries, error) {
	bin, lib := filepath.Join(dir, "bin"), filepath.Join(dir, "lib")
	b := binaries{
		agent: filepath.Join(bin, "loupe-agent"), aggregator: filepath.Join(bin, "loupe-aggregator"),
		lib: filepath.Join(lib, "libnccl.so.2"), train: filepath.Join(bin, "train"),
	}
	if _, err := exec.LookPath("gcc"); err != nil {
		return b, errNoGCC
	}
	for _, d := range []string{bin, lib} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return b, err
		}
	}
	ncclSrc := filepath.Join(root, "agent", "nccl", "testdata")
	steps := [][]string{
		{"go", "build", "-o", bin + "/", "./agent/cmd/loupe-agent", "./aggregator/cmd/loupe-aggregator"},
		{"gcc", "-Wall", "-Werror", "-shared", "-fPIC", "-O2", "-Wl,-soname,libnccl.so.2", "-o", b.lib, filepath.Join(ncclSrc, "nccl.c"), "-ldl", "-lpthread"},
		// Frame pointers and no inlining: the CPU profile shows decode_jpeg
		// and collate_batch as the workload names them.
		{"gcc", "-Wall", "-Werror", "-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline", "-I", ncclSrc, "-o", b.train,
			filepath.Join(root, "deploy", "demo", "workload", "train.c"), b.lib, "-Wl,-rpath," + lib},
	}
	for _, args := range steps {
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return b, fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), err, out)
		}
	}
	return b, nil
}
