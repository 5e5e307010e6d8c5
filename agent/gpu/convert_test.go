package gpu

import (
	"encoding/binary"
	"errors"
	"math"
	"testing"

	"github.com/NVIDIA/go-dcgm/pkg/dcgm"
	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

func TestDCGMValue(t *testing.T) {
	f64 := func(v float64, status int) dcgm.FieldValue_v1 {
		fv := dcgm.FieldValue_v1{FieldType: dcgm.DCGM_FT_DOUBLE, Status: status}
		binary.LittleEndian.PutUint64(fv.Value[:], math.Float64bits(v))
		return fv
	}
	i64 := func(v int64) dcgm.FieldValue_v1 {
		fv := dcgm.FieldValue_v1{FieldType: dcgm.DCGM_FT_INT64}
		binary.LittleEndian.PutUint64(fv.Value[:], uint64(v))
		return fv
	}
	tests := []struct {
		name string
		in   dcgm.FieldValue_v1
		want float64
		ok   bool
	}{
		{"ratio", f64(0.42, 0), 0.42, true},
		{"bytes", i64(123456789), 123456789, true},
		{"blank double (paused)", f64(140737488355328.0, 0), 0, false},
		{"25 GB/s is a value", i64(25_000_000_000), 25e9, true},
		{"blank int64", i64(0x7ffffffffffffff0), 0, false},
		{"failed status", f64(0.5, -16), 0, false},
		{"string field", dcgm.FieldValue_v1{FieldType: dcgm.DCGM_FT_STRING}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := dcgmValue(tt.in)
			if got != tt.want || ok != tt.ok {
				t.Errorf("dcgmValue = %v, %v; want %v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestReasons(t *testing.T) {
	nv := map[nvml.Return]string{
		nvml.ERROR_LIBRARY_NOT_FOUND: "driver_library_not_found",
		nvml.ERROR_DRIVER_NOT_LOADED: "driver_not_loaded",
		nvml.ERROR_NO_PERMISSION:     "no_permission",
		nvml.ERROR_UNKNOWN:           "nvml_init_failed",
	}
	for ret, want := range nv {
		if got := nvmlReason(ret); got != want {
			t.Errorf("nvmlReason(%v) = %q, want %q", ret, got, want)
		}
	}
	dc := map[string]string{
		"libdcgm.so.4 not found": "libdcgm_not_found",
		"DCGM profiling module not available (...): Profiling module not loaded":         "profiling_module_unavailable",
		"error connecting to nv-hostengine: Host engine connection invalid/disconnected": "hostengine_unreachable",
		"DCGM supports none of the GPUs":                                                 "no_supported_gpu",
		"error initializing DCGM: something":                                             "init_failed",
	}
	for msg, want := range dc {
		if got := dcgmReason(errors.New(msg)); got != want {
			t.Errorf("dcgmReason(%q) = %q, want %q", msg, got, want)
		}
	}
}

func TestFieldUint(t *testing.T) {
	v := func(typ nvml.ValueType, ret nvml.Return, raw uint64) *nvml.FieldValue {
		fv := &nvml.FieldValue{ValueType: uint32(typ), NvmlReturn: uint32(ret)}
		binary.LittleEndian.PutUint64(fv.Value[:], raw)
		return fv
	}
	tests := []struct {
		name string
		in   *nvml.FieldValue
		want uint64
		ok   bool
	}{
		{"uint", v(nvml.VALUE_TYPE_UNSIGNED_INT, nvml.SUCCESS, 0xdead_0000_0041), 0x41, true},
		{"ulonglong", v(nvml.VALUE_TYPE_UNSIGNED_LONG_LONG, nvml.SUCCESS, 1<<40), 1 << 40, true},
		{"double is not a counter", v(nvml.VALUE_TYPE_DOUBLE, nvml.SUCCESS, 1), 0, false},
		{"failed", v(nvml.VALUE_TYPE_UNSIGNED_INT, nvml.ERROR_NOT_SUPPORTED, 5), 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := fieldUint(tt.in)
			if got != tt.want || ok != tt.ok {
				t.Errorf("fieldUint = %#x, %v; want %#x, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}
