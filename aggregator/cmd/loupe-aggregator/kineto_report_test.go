package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// graphTrace is one rank whose kernels come from a kernel launch and from a
// CUDA graph launch (one call, two kernels), which HTA does not count.
const graphTrace = `{"schemaVersion":1,"distributedInfo":{"backend":"nccl","rank":0,"world_size":1},
"traceEvents":[
{"ph":"X","cat":"cuda_runtime","name":"cudaLaunchKernel","pid":100,"tid":100,"ts":1000,"dur":8,"args":{"correlation":1}},
{"ph":"X","cat":"kernel","name":"gemm","pid":0,"tid":7,"ts":1020,"dur":400,"args":{"correlation":1,"stream":7}},
{"ph":"X","cat":"cuda_runtime","name":"cudaGraphLaunch","pid":100,"tid":100,"ts":1500,"dur":20,"args":{"correlation":2}},
{"ph":"X","cat":"kernel","name":"relu","pid":0,"tid":7,"ts":1600,"dur":5,"args":{"correlation":2,"stream":7}},
{"ph":"X","cat":"kernel","name":"add","pid":0,"tid":9,"ts":1610,"dur":5,"args":{"correlation":2,"stream":9}}
]}`

// --report prints every rank's and every stream's numbers, healthy or not;
// --launch-apis extended counts the graph launch HTA leaves out.
func TestAnalyzeKinetoReport(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rank0.json"), []byte(graphTrace), 0o644); err != nil {
		t.Fatal(err)
	}
	// Span 1020..1615 = 595 us; busy 400 + 5 + 5, idle 185; stream 7 waits
	// 180 us for the host (relu's launch started after gemm ended), stream 9
	// has one kernel and no gap. The graph launch (20 us of CPU) started two
	// 5 us kernels 80 and 90 us after it returned: two short kernels, no
	// delay outlier (over 100 us).
	for _, tt := range []struct {
		flag, launches string
	}{
		{"hta", "       0          595   185      410            0              0       0  31.09     68.91          0.00      0.00         1      0               0                 0"},
		{"extended", "       0          595   185      410            0              0       0  31.09     68.91          0.00      0.00         3      2               0                 0"},
	} {
		out, stderr, err := runCmd(t, "analyze", dir, "--report", "--launch-apis", tt.flag)
		if err != nil {
			t.Fatalf("%v\n%s", err, stderr)
		}
		for _, want := range []string{"Kineto report (times in us)", tt.launches,
			"       0       7        2        180            0      0             1.00               0.00         0.00",
			"       0       9        1          0            0      0             0.00               0.00         0.00"} {
			if !strings.Contains(out, want) {
				t.Errorf("--launch-apis %s: report lacks\n%q\n%s", tt.flag, want, out)
			}
		}
	}
	out, _, err := runCmd(t, "analyze", dir, "--report", "--json")
	if err != nil || !strings.Contains(out, `"kineto": [`) || !strings.Contains(out, `"host_wait_ns": 180000`) {
		t.Errorf("--json --report: %v\n%s", err, out)
	}
	if _, _, err := runCmd(t, "analyze", dir, "--launch-apis", "all"); err == nil || !strings.Contains(err.Error(), "want hta or extended") {
		t.Errorf("bad --launch-apis: %v", err)
	}
}
