package nccl

import (
	"strings"
	"testing"
)

func TestNCCLMappings(t *testing.T) {
	const maps = `55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 1311 /usr/bin/python3.11
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
7f1000000000-7f1000200000 r--p 00000000 fd:01 4242 /opt/venv/lib/python3.11/site-packages/nvidia/nccl/lib/libnccl.so.2
7f1000200000-7f1004000000 r-xp 00200000 fd:01 4242 /opt/venv/lib/python3.11/site-packages/nvidia/nccl/lib/libnccl.so.2
7f2000000000-7f2000100000 r-xp 00000000 fd:01 77 /usr/lib/x86_64-linux-gnu/libnccl-net.so
7f3000000000-7f3000100000 r-xp 00000000 103:02 99 /home/u/my libs/libnccl.so.2.21.5 (deleted)
7f4000000000-7f4000100000 r-xp 00000000 fd:01 5 /usr/lib/libnccl.so
7f5000000000-7f5000001000 r--p 00000000 fd:01 31 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7f5000001000-7f5000020000 r-xp 00001000 fd:01 31 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
`
	got, loader, err := ncclMappings(strings.NewReader(maps))
	if err != nil {
		t.Fatal(err)
	}
	if loader != (mapping{ID: fileID{0xfd<<32 | 1, 31}, Path: "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"}) {
		t.Errorf("loader %+v", loader)
	}
	want := []mapping{
		{ID: fileID{0xfd<<32 | 1, 4242}, Path: "/opt/venv/lib/python3.11/site-packages/nvidia/nccl/lib/libnccl.so.2"},
		{ID: fileID{0x103<<32 | 2, 99}, Path: "/home/u/my libs/libnccl.so.2.21.5", Deleted: true},
		{ID: fileID{0xfd<<32 | 1, 5}, Path: "/usr/lib/libnccl.so"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("mapping %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestParseMapsLineErrors(t *testing.T) {
	for _, line := range []string{
		"libnccl",
		"7f-8f r-xp 0 fd01 1 /x/libnccl.so.2",
		"7f-8f r-xp 0 fd:zz 1 /x/libnccl.so.2",
		"7f-8f r-xp 0 fd:01 -1 /x/libnccl.so.2",
		"7f8f r-xp 0 fd:01 1 /x/libnccl.so.2",
		"7f-8f rx 0 fd:01 1 /x/libnccl.so.2",
	} {
		if _, _, err := parseMapsLine(line); err == nil {
			t.Errorf("%q: no error", line)
		}
	}
	if _, _, err := ncclMappings(strings.NewReader("garbage libnccl.so.2\n")); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("error %v does not name the line", err)
	}
}

func TestIsNCCLLibrary(t *testing.T) {
	for path, want := range map[string]bool{
		"/usr/lib/x86_64-linux-gnu/libnccl.so.2":        true,
		"/x/site-packages/nvidia/nccl/lib/libnccl.so.2": true,
		"/x/site-packages/torch/lib/libnccl.so.2.21.5":  true,
		"/usr/lib/libnccl.so":                           true,
		"/usr/lib/libnccl-net.so":                       false,
		"/usr/lib/libnccl_static.a":                     false,
		"/x/site-packages/torch/lib/libtorch_cuda.so":   false,
		"/x/libnccl.so.2/other.so":                      false,
		"/opt/nccl-tests/build/all_reduce_perf":         false,
	} {
		if got := isNCCLLibrary(path); got != want {
			t.Errorf("isNCCLLibrary(%q) = %v, want %v", path, got, want)
		}
	}
}

// FuzzNCCLMappings: maps text comes from other processes' /proc files;
// whatever it holds, parsing must not panic, and what it returns must be a
// usable NCCL mapping.
func FuzzNCCLMappings(f *testing.F) {
	f.Add("7f1000200000-7f1004000000 r-xp 00200000 fd:01 4242 /x/nvidia/nccl/lib/libnccl.so.2\n")
	f.Add("7f-8f r-xp 0 103:02 99 /a b/libnccl.so.2 (deleted)\n7f-8f r-xp 0 0:0 0 [vdso]\n")
	f.Add("libnccl")
	f.Add("7f-8f r-xp 0 fd:01 1 libnccl.so.2\n")
	f.Add("7f-8f r-xp 0 fd:01 31 /lib/ld-linux-x86-64.so.2\n")
	f.Fuzz(func(t *testing.T, s string) {
		ms, loader, err := ncclMappings(strings.NewReader(s))
		if err != nil {
			return
		}
		if loader.ID != (fileID{}) && (!isLoader(loader.Path) || loader.ID.Inode == 0) {
			t.Fatalf("loader %+v", loader)
		}
		for _, m := range ms {
			if !isNCCLLibrary(m.Path) || !strings.HasPrefix(m.Path, "/") || m.ID.Inode == 0 {
				t.Fatalf("returned unusable mapping %+v", m)
			}
		}
	})
}

func TestSelected(t *testing.T) {
	patterns := []string{"/opt/conda/envs/*", "/tmp/standin/libnccl.so.2"}
	for path, want := range map[string]bool{
		"/opt/conda/envs/train/lib/libnccl.so.2": true,
		"/opt/conda/lib/libnccl.so.2":            false,
		"/tmp/standin/libnccl.so.2":              true,
		"/tmp/standin/old/libnccl.so.2":          false,
		"/usr/lib/x86_64-linux-gnu/libnccl.so.2": false,
	} {
		if got := selected(patterns, path); got != want {
			t.Errorf("selected(%q) = %v, want %v", path, got, want)
		}
	}
	if !selected(nil, "/anywhere/libnccl.so.2") {
		t.Error("no patterns must select every library")
	}
}
