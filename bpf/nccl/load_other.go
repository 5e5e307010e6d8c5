//go:build !amd64

package nccl

import (
	"errors"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Objects are the programs and maps loaded into the kernel; on this
// architecture there are none.
type Objects struct {
	Probes []Probe
}

// errArch says why nothing loads here: the probes read arguments with the
// x86-64 calling convention.
var errArch = errors.New("NCCL uprobes support x86-64 only; set nccl.enabled: false on this architecture")

// Load fails: the NCCL probes are built for x86-64 only.
func Load(int) (*Objects, error) { return nil, errArch }

// Events is nil here.
func (o *Objects) Events() *ebpf.Map { return nil }

// Lost fails here.
func (o *Objects) Lost() (uint64, error) { return 0, errArch }

// CommCount fails here.
func (o *Objects) CommCount() (int, error) { return 0, errArch }

// ForgetPIDs does nothing here.
func (o *Objects) ForgetPIDs(map[uint32]bool) error { return nil }

// InFlight fails here.
func (o *Objects) InFlight() ([]Event, error) { return nil, errArch }

// Close does nothing here.
func (o *Objects) Close() error { return nil }

// Multi reports no uprobe_multi support here.
func (o *Objects) Multi() (entry, ret *ebpf.Program, ok bool) { return nil, nil, false }

// MapEvents is nil here.
func (o *Objects) MapEvents() *ebpf.Map { return nil }

// LoaderProbe is nil here.
func (o *Objects) LoaderProbe() *ebpf.Program { return nil }

// AttachExec fails here.
func (o *Objects) AttachExec() (link.Link, error) { return nil, errArch }

// SetTraced does nothing here.
func (o *Objects) SetTraced(uint32, bool) error { return nil }
