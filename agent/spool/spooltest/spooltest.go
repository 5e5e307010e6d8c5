// Package spooltest writes capture bundles into a spool for tests of the
// spool, the uploader and their users, through the real bundle writer.
package spooltest

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/agent/spool"
	"github.com/loupe-dev/loupe/traces"
)

// Manifest returns a plausible manifest for captureID on host in cluster
// "test", job "train", run "r1", without parts.
func Manifest(captureID, host string) traces.Manifest {
	start := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	return traces.Manifest{
		CaptureID: captureID, Cluster: "test", Job: "train", Run: "r1", Host: host,
		Ranks: []int{0, 1}, WorldSize: 2, Start: start, End: start.Add(30 * time.Second),
		Trigger:      traces.Trigger{Kind: traces.TriggerOnDemand, Reason: "test"},
		AgentVersion: "test",
	}
}

// Parts returns n parts of size bytes each with deterministic random
// content, named part00.bin, part01.bin, ... (the last one inside kineto/, so
// nested part names are covered).
func Parts(seed uint64, n, size int) map[string][]byte {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)})
	parts := make(map[string][]byte, n)
	for i := range n {
		b := make([]byte, size)
		r.Read(b)
		name := fmt.Sprintf("part%02d.bin", i)
		if i == n-1 {
			name = traces.KinetoDir + "rank0.json.gz"
		}
		parts[name] = b
	}
	return parts
}

// Write writes a bundle with m's metadata and the given parts into the
// spool (Begin, parts, manifest last, Commit) and returns its manifest and
// the manifest's bytes as committed.
func Write(t testing.TB, sp *spool.Spool, m traces.Manifest, parts map[string][]byte) *traces.Manifest {
	t.Helper()
	dir, err := sp.Begin(m.CaptureID, m.Host)
	if err != nil {
		t.Fatal(err)
	}
	bw, err := traces.NewBundleWriter(dir, m)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(parts))
	for n := range parts {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if err := bw.WritePart(n, "application/octet-stream", bytes.NewReader(parts[n])); err != nil {
			t.Fatal(err)
		}
	}
	got, err := bw.Commit()
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.Commit(dir); err != nil {
		t.Fatal(err)
	}
	return got
}
