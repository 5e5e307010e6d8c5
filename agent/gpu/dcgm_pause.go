package gpu

/*
#cgo LDFLAGS: -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>

typedef int (*loupeProfFn)(uintptr_t);

// loupe_dcgm_prof calls dcgmProfPause or dcgmProfResume from the libdcgm
// that go-dcgm loaded (RTLD_GLOBAL). -1000 means the symbol is missing.
static int loupe_dcgm_prof(int pause, uintptr_t handle) {
	void *f = dlsym(RTLD_DEFAULT, pause ? "dcgmProfPause" : "dcgmProfResume");
	if (f == NULL) return -1000;
	return ((loupeProfFn)f)(handle);
}
*/
import "C"

import (
	"fmt"
	_ "unsafe" // go:linkname
)

// go-dcgm has no wrapper for dcgmProfPause/dcgmProfResume (what `dcgmi
// profile --pause` calls), and keeps its session handle unexported. The
// handle is a single uintptr_t (go-dcgm's dcgmHandle struct); reading it by
// linkname lets the pause apply to the same session that watches the fields.
//
//go:linkname dcgmSession github.com/NVIDIA/go-dcgm/pkg/dcgm.handle
var dcgmSession struct{ h uintptr }

func dcgmProfPause(pause bool) error {
	p := C.int(0)
	if pause {
		p = 1
	}
	switch r := C.loupe_dcgm_prof(p, C.uintptr_t(dcgmSession.h)); r {
	case 0:
		return nil
	case -1000:
		return fmt.Errorf("this libdcgm has no dcgmProfPause/dcgmProfResume: update DCGM to 2.x or later")
	default:
		return fmt.Errorf("dcgm profiling pause=%v failed: DCGM error %d", pause, int(r))
	}
}
