package kineto

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"testing"
)

// realisticTrace writes n groups of Kineto-like events: a cpu_op with the
// argument lists torch.profiler records, a runtime launch and its kernel.
func realisticTrace(n int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"schemaVersion":1,"distributedInfo":{"backend":"nccl","rank":0,"world_size":8},"traceEvents":[`)
	ts := 1000.0
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `
  {
    "ph": "X", "cat": "cpu_op", "name": "aten::addmm", "pid": 1234, "tid": 1234,
    "ts": %.3f, "dur": 25.125,
    "args": {
      "External id": %d,"Record function id": 0, "Input Dims": [[1024], [64, 512], [512, 1024], [], []], "Input type": ["float", "float", "float", "Scalar", "Scalar"], "Input Strides": [[1], [512, 1], [1, 512], [], []], "Concrete Inputs": ["", "", "", "1", "1"], "Ev Idx": %d
    }
  },
  {
    "ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1234, "tid": 1234,
    "ts": %.3f, "dur": 6.250,
    "args": {
      "External id": %d, "cbid": 211, "correlation": %d
    }
  },
  {
    "ph": "X", "cat": "kernel", "name": "void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_128x128_16x5_tn_align4>(cutlass_80_tensorop_s1688gemm_128x128_16x5_tn_align4::Params)", "pid": 0, "tid": 7,
    "ts": %.3f, "dur": 40.500,
    "args": {
      "External id": %d, "queued": 0, "device": 0, "context": 1, "stream": 7, "correlation": %d, "registers per thread": 128, "shared memory": 81920, "blocks per SM": 1.2, "warps per SM": 4.8, "grid": [16, 8, 1], "block": [128, 1, 1], "est. achieved occupancy %%": 6
    }
  }`, ts, i, i, ts+2, i, i, ts+10, i, i)
		ts += 45
	}
	b.WriteString("\n],\"displayTimeUnit\":\"ms\"}\n")
	return b.Bytes()
}

func BenchmarkReader(b *testing.B) {
	data := realisticTrace(20000)
	for _, tc := range []struct {
		name string
		data []byte
	}{{"plain", data}, {"gzip", gz(data)}} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				r, err := NewReader(bytes.NewReader(tc.data), Limits{})
				if err != nil {
					b.Fatal(err)
				}
				for {
					if _, err := r.Next(); err == io.EOF {
						break
					} else if err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkEncodingJSONToken is the baseline the hand-written scanner
// replaces: encoding/json's Decoder.Token over the same trace.
func BenchmarkEncodingJSONToken(b *testing.B) {
	data := realisticTrace(20000)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		d := json.NewDecoder(bytes.NewReader(data))
		for {
			if _, err := d.Token(); err == io.EOF {
				break
			} else if err != nil {
				b.Fatal(err)
			}
		}
	}
}
