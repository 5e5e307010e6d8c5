package nccl

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLibraryVersion(t *testing.T) {
	root := t.TempDir()
	site := "/opt/venv/lib/python3.12/site-packages"
	for _, d := range []string{site + "/nvidia/nccl/lib", site + "/nvidia_nccl_cu12-2.21.5.dist-info", site + "/nvidia_cublas_cu12-12.4.5.8.dist-info",
		"/other/site-packages/nvidia/nccl/lib"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct{ path, want string }{
		{"/usr/lib/x86_64-linux-gnu/libnccl.so.2.23.4", "2.23.4"},
		{"/opt/conda/lib/libnccl.so.2.19.3", "2.19.3"},
		{site + "/nvidia/nccl/lib/libnccl.so.2", "2.21.5"},
		// A wheel folder without its metadata, a bare soname, a stand-in.
		{"/other/site-packages/nvidia/nccl/lib/libnccl.so.2", ""},
		{"/usr/lib/libnccl.so.2", ""},
		{"/tmp/libnccl.so", ""},
		{"/no/such/site-packages/nvidia/nccl/lib/libnccl.so.2", ""},
	}
	for _, tt := range tests {
		if got := LibraryVersion(root, tt.path); got != tt.want {
			t.Errorf("LibraryVersion(%s) = %q, want %q", tt.path, got, tt.want)
		}
	}
}
