package traces_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// duckdb returns the node binary and the NODE_PATH that holds
// @duckdb/node-api, failing (CI=true) or skipping the test without them.
func duckdb(t *testing.T) (node, nodePath string) {
	t.Helper()
	nodePath = os.Getenv("LOUPE_DUCKDB_NODE_PATH")
	if nodePath == "" {
		nodePath, _ = filepath.Abs(filepath.Join("..", ".cache", "duckdb", "node_modules"))
	}
	node, err := exec.LookPath("node")
	if err == nil {
		_, err = os.Stat(filepath.Join(nodePath, "@duckdb", "node-api", "package.json"))
	}
	if err != nil {
		msg := fmt.Sprintf("DuckDB for node not found (%v): apt-get install nodejs, then `make duckdb` (npm ci of traces/testdata/duckdb into .cache/duckdb), or set LOUPE_DUCKDB_NODE_PATH", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return node, nodePath
}

// readmeQuery is the SQL block that follows marker in the README.
func readmeQuery(t *testing.T, marker string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(data), marker)
	if !ok {
		t.Fatalf("README.md has no %q", marker)
	}
	_, after, _ = strings.Cut(after, "```sql\n")
	sql, _, ok := strings.Cut(after, "```")
	if !ok {
		t.Fatalf("README.md: no SQL block after %q", marker)
	}
	return sql
}

// The README's per-rank skew query, run by DuckDB over a store of two
// hosts (ranks 0-1 and 2-3) where rank 3 arrives 30 ms late at every
// all-reduce: rank 3 comes first with a 30 ms mean lag, the others near 0.
func TestDuckDBReadmeQuery(t *testing.T) {
	node, nodePath := duckdb(t)
	root := t.TempDir()
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	for h, host := range []string{"gpu-node-1", "gpu-node-2"} {
		m := traces.Manifest{
			CaptureID: "cap-1", Cluster: "c1", Job: "llm", Run: "r1", Host: host, Ranks: []int{2 * h, 2*h + 1}, WorldSize: 4,
			Start: t0, End: t0.Add(10 * time.Second), Trigger: traces.Trigger{Kind: traces.TriggerOnDemand, Reason: "test"}, AgentVersion: "test",
		}
		w, err := traces.NewBundleWriter(filepath.Join(root, filepath.FromSlash(traces.KeyOf(&m).Prefix())), m)
		must(t, err)
		var evs []traces.NCCLEvent
		for seq := range int64(50) {
			for _, r := range m.Ranks {
				lag := int64(r) * 10_000 // 10 us of jitter per rank
				if r == 3 {
					lag = 30_000_000
				}
				at := t0.Add(time.Duration(seq) * 100 * time.Millisecond).UnixNano()
				evs = append(evs, traces.NCCLEvent{TimeNs: at + lag, Rank: int32(r), NRanks: 4, CommID: 0xc0ffee, Op: "AllReduce", Seq: seq, Peer: -1},
					traces.NCCLEvent{TimeNs: at, Rank: int32(r), NRanks: 4, CommID: 0xc0ffee, Op: "GroupStart", Seq: seq, Peer: -1})
			}
		}
		must(t, traces.WriteTable(w, traces.PartNCCLEvents, evs))
		_, err = w.Commit()
		must(t, err)
	}
	cmd := exec.Command(node, filepath.Join("testdata", "duckdb", "query.cjs"), root)
	cmd.Env = append(os.Environ(), "NODE_PATH="+nodePath)
	cmd.Stdin = strings.NewReader(readmeQuery(t, "<!-- duckdb: per-rank arrival skew -->"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("duckdb: %v: %s", err, stderr.String())
	}
	var rows []map[string]any
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatalf("duckdb output %q: %v", out, err)
	}
	num := func(v any) float64 {
		f, _ := strconv.ParseFloat(fmt.Sprint(v), 64)
		return f
	}
	if len(rows) != 4 {
		t.Fatalf("rows %v, want one per rank", rows)
	}
	if rows[0]["rank"] != float64(3) || num(rows[0]["mean_lag_ms"]) != 30 || num(rows[0]["collectives"]) != 50 || rows[0]["job"] != "llm" {
		t.Errorf("first row %v, want rank 3 of llm with a 30 ms mean lag over 50 collectives", rows[0])
	}
	for _, r := range rows[1:] {
		if num(r["mean_lag_ms"]) > 0.05 {
			t.Errorf("row %v: only rank 3 lags", r)
		}
	}
}
