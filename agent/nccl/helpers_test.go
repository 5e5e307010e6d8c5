package nccl

import (
	"slices"
	"syscall"
	"testing"

	"github.com/loupe-dev/loupe/traces"

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

func slicesSortByTime(evs []traces.NCCLEvent) {
	slices.SortStableFunc(evs, func(a, b traces.NCCLEvent) int { return cmpInt64(a.TimeNs, b.TimeNs) })
}

func nobody() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
}
