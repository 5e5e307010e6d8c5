package nccl

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Where a libnccl's version shows, without loading it: in the file name of
// system and conda copies (libnccl.so.2.21.5, which the maps show through
// the libnccl.so.2 link), and for the pip wheel (site-packages/nvidia/nccl/
// lib/libnccl.so.2) in the name of the wheel's metadata folder beside it
// (site-packages/nvidia_nccl_cu12-2.21.5.dist-info).
var (
	soVersion    = regexp.MustCompile(`^libnccl\.so\.(\d+\.\d+\.\d+)$`)
	wheelVersion = regexp.MustCompile(`^nvidia_nccl_cu\d+-(\d+\.\d+\.\d+[^/]*)\.dist-info$`)
)

// LibraryVersion is the version of the libnccl at path, as the process
// whose root folder is root maps it, or "" when neither its file name nor a
// wheel's metadata says.
func LibraryVersion(root, path string) string {
	if m := soVersion.FindStringSubmatch(filepath.Base(path)); m != nil {
		return m[1]
	}
	// .../site-packages/nvidia/nccl/lib/libnccl.so.2
	lib := filepath.Dir(path)
	if filepath.Base(lib) != "lib" || filepath.Base(filepath.Dir(lib)) != "nccl" {
		return ""
	}
	site := filepath.Dir(filepath.Dir(filepath.Dir(lib)))
	entries, err := os.ReadDir(filepath.Join(root, site))
	if err != nil {
		return ""
	}
	for _, e := range entries {
		if m := wheelVersion.FindStringSubmatch(e.Name()); m != nil && e.IsDir() {
			return strings.TrimSuffix(m[1], ".")
		}
	}
	return ""
}
