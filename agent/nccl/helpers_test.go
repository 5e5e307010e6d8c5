package nccl

import (
	"testing"

	bpfnccl "github.com/loupe-dev/loupe/bpf/nccl"
)

func opByName(t *testing.T, name string) bpfnccl.Op {
	t.Helper()
	for _, op := range bpfnccl.Ops() {
		if op.String() == name {
			return op
		}
	}
	t.Fatalf("no op %q", name)
	return 0
}
