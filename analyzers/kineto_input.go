package analyzers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"weak"

	"github.com/loupe-dev/loupe/analyzers/kineto"
	"github.com/loupe-dev/loupe/traces"
)

// KinetoSummaries measures every Kineto trace of the capture (one file per
// traced process, normally one per rank): one streaming pass per file, files
// in parallel up to GOMAXPROCS. Traces that cannot be read are left out and
// named in the returned error, which comes with the summaries of the others.
// Summaries are ordered by rank, then host and part.
func KinetoSummaries(ctx context.Context, in *Input, opts KinetoOptions) ([]*KinetoRank, error) {
	type job struct {
		host *Host
		part string
	}
	var jobs []job
	for i := range in.Hosts {
		h := &in.Hosts[i]
		for _, p := range h.Manifest.Parts {
			if strings.HasPrefix(p.Name, traces.KinetoDir) {
				jobs = append(jobs, job{h, p.Name})
			}
		}
	}
	if len(jobs) == 0 {
		return nil, nil
	}
	out := make([]*KinetoRank, len(jobs))
	errs := make([]error, len(jobs))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(jobs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				out[i], errs[i] = readKineto(ctx, jobs[i].host, jobs[i].part, opts)
			}
		}()
	}
feed:
	for i := range jobs {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var ranks []*KinetoRank
	for _, r := range out {
		if r != nil {
			ranks = append(ranks, r)
		}
	}
	hostOrder := make(map[*Host]int, len(in.Hosts))
	for i := range in.Hosts {
		hostOrder[&in.Hosts[i]] = i
	}
	slices.SortStableFunc(ranks, func(a, b *KinetoRank) int {
		return cmp.Or(cmp.Compare(a.Rank, b.Rank), cmp.Compare(hostOrder[a.Host], hostOrder[b.Host]), cmp.Compare(a.Part, b.Part))
	})
	err := errors.Join(errs...)
	if err != nil && len(ranks) > 0 {
		slog.WarnContext(ctx, "some Kineto traces could not be read", "err", err)
	}
	return ranks, err
}

// readKineto reads and measures one part.
func readKineto(ctx context.Context, h *Host, part string, opts KinetoOptions) (*KinetoRank, error) {
	rc, err := h.Open(ctx, part)
	if err != nil {
		return nil, partErr(h, part, err)
	}
	defer rc.Close()
	r, err := analyzeKineto(ctx, rc, opts)
	if err != nil {
		return nil, partErr(h, part, fmt.Errorf("%w (is it a Kineto trace as torch.profiler writes it?)", err))
	}
	r.Host, r.Part = h, part
	if r.Rank < 0 {
		r.Rank = rankOfPart(h, part)
	}
	r.Temporal.Rank = r.Rank
	return r, nil
}

var (
	rankInName = regexp.MustCompile(`(?i)rank[_-]?(\d+)`)
	pidInName  = regexp.MustCompile(`[_.-](\d+)\.(?:pt\.trace\.)?json`)
)

// rankOfPart finds the rank of a trace without distributedInfo: from a
// "rank<N>" in its name, else from the manifest's process whose pid the name
// carries, else the host's only rank; -1 when none says.
func rankOfPart(h *Host, part string) int {
	base := part[strings.LastIndex(part, "/")+1:]
	if m := rankInName.FindStringSubmatch(base); m != nil {
		if n, err := strconv.Atoi(m[1]); err == nil {
			return n
		}
	}
	if m := pidInName.FindStringSubmatch(base); m != nil {
		if pid, err := strconv.Atoi(m[1]); err == nil {
			for _, p := range h.Manifest.Processes {
				if p.PID == pid {
					return p.Rank
				}
			}
		}
	}
	if len(h.Manifest.Ranks) == 1 {
		return h.Manifest.Ranks[0]
	}
	return -1
}

// The Kineto analyzers share one reading of the traces per Input: the first
// to ask reads them, the others wait. Entries go when their Input is
// garbage-collected, so a long-running aggregator does not accumulate them.
var kinetoCache = struct {
	sync.Mutex
	m map[weak.Pointer[Input]]*kinetoEntry
}{m: map[weak.Pointer[Input]]*kinetoEntry{}}

type kinetoEntry struct {
	done  chan struct{}
	ranks []*KinetoRank
	err   error
}

// kinetoRanks returns the capture's Kineto summaries with the Input's options,
// reading the traces once for all analyzers of a run. unread names the
// traces that could not be read when others could; err is set when none
// could.
func kinetoRanks(pass *Pass) (ranks []*KinetoRank, unread, err error) {
	ctx, in := pass.Context, pass.Input
	key := weak.Make(in)
	for {
		kinetoCache.Lock()
		e, ok := kinetoCache.m[key]
		if !ok {
			e = &kinetoEntry{done: make(chan struct{})}
			kinetoCache.m[key] = e
			runtime.AddCleanup(in, func(k weak.Pointer[Input]) {
				kinetoCache.Lock()
				delete(kinetoCache.m, k)
				kinetoCache.Unlock()
			}, key)
		}
		kinetoCache.Unlock()
		if !ok {
			e.ranks, e.err = KinetoSummaries(ctx, in, in.KinetoOptions())
			if ctx.Err() != nil {
				// A cancelled reading is not an answer: let the next caller retry.
				kinetoCache.Lock()
				delete(kinetoCache.m, key)
				kinetoCache.Unlock()
			}
			close(e.done)
		} else {
			// Give up the CPU slot while another analyzer reads the traces.
			if err := pass.wait(e.done); err != nil {
				return nil, nil, err
			}
			if errors.Is(e.err, context.Canceled) || errors.Is(e.err, context.DeadlineExceeded) {
				if ctx.Err() != nil {
					return nil, nil, ctx.Err()
				}
				continue
			}
		}
		for _, r := range e.ranks {
			pass.Used(r.Host, r.Part)
		}
		if len(e.ranks) == 0 && e.err != nil {
			return nil, nil, e.err
		}
		return e.ranks, e.err, nil
	}
}

// TemporalBreakdown is HTA's temporal breakdown for every rank of the
// capture that has a Kineto trace.
func TemporalBreakdown(ctx context.Context, in *Input) ([]RankBreakdown, error) {
	ranks, err := KinetoSummaries(ctx, in, in.KinetoOptions())
	out := make([]RankBreakdown, len(ranks))
	for i, r := range ranks {
		out[i] = r.Temporal
	}
	return out, err
}

// RankKernels is the kernel breakdown of one rank: its GPU event names with
// their statistics, longest total time first.
type RankKernels struct {
	Rank    int          `json:"rank"`
	Host    string       `json:"host"`
	Kernels []KernelStat `json:"kernels"`
}

// KernelBreakdown is the kernel breakdown for every rank of the capture that
// has a Kineto trace.
func KernelBreakdown(ctx context.Context, in *Input) ([]RankKernels, error) {
	ranks, err := KinetoSummaries(ctx, in, in.KinetoOptions())
	out := make([]RankKernels, len(ranks))
	for i, r := range ranks {
		out[i] = RankKernels{Rank: r.Rank, Host: r.Host.Manifest.Host, Kernels: r.Kernels}
	}
	return out, err
}

// KinetoFolderInput turns a plain folder of Kineto trace files (one per
// rank, *.json or *.json.gz, as torch.profiler writes them) into an Input,
// so that the analyzers run with no agent and no store. The folder becomes
// one host bundle; each trace's rank comes from its distributedInfo.
func KinetoFolderInput(dir string) (*Input, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("kineto folder %s: %w", dir, err)
	}
	name := sanitizeComponent(filepath.Base(filepath.Clean(dir)))
	m := &traces.Manifest{
		SchemaVersion: traces.SchemaVersion,
		CaptureID:     name,
		Cluster:       "local",
		Job:           name,
		Run:           "offline",
		Host:          "local",
		Trigger:       traces.Trigger{Kind: traces.TriggerOnDemand, Reason: "kineto folder " + dir},
		AgentVersion:  "none",
	}
	paths := map[string]string{}
	worldSize := 0
	for _, e := range entries {
		fn := e.Name()
		if e.IsDir() || !(strings.HasSuffix(fn, ".json") || strings.HasSuffix(fn, ".json.gz")) {
			continue
		}
		path := filepath.Join(dir, fn)
		info, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("kineto folder %s: %w", dir, err)
		}
		part := traces.KinetoDir + sanitizeComponent(fn)
		for i := 2; paths[part] != ""; i++ {
			part = traces.KinetoDir + sanitizeComponent(fn) + "-" + strconv.Itoa(i)
		}
		paths[part] = path
		m.Parts = append(m.Parts, traces.Part{Name: part, MediaType: traces.MediaKineto, Size: info.Size()})
		rank, ws, err := kinetoHeader(path)
		if err != nil {
			return nil, fmt.Errorf("kineto folder %s: %s is not a Kineto trace (%v); analyze takes a folder of torch.profiler / Kineto traces only: move other files out, or pass a store or capture folder", dir, fn, err)
		}
		if rank >= 0 {
			m.Ranks = append(m.Ranks, rank)
			m.Processes = append(m.Processes, traces.Process{Rank: rank, LocalRank: -1, GPU: -1})
		}
		worldSize = max(worldSize, ws)
	}
	if len(m.Parts) == 0 {
		return nil, fmt.Errorf("kineto folder %s: no trace files (*.json or *.json.gz, as torch.profiler writes them)", dir)
	}
	slices.Sort(m.Ranks)
	m.Ranks = slices.Compact(m.Ranks)
	m.WorldSize = max(worldSize, len(m.Parts))
	host := Host{
		Manifest: m,
		Key:      func(part string) string { return paths[part] },
		Open: func(ctx context.Context, part string) (io.ReadCloser, error) {
			p, ok := paths[part]
			if !ok {
				return nil, fmt.Errorf("%w: %q", traces.ErrMissingPart, part)
			}
			return os.Open(p)
		},
	}
	return &Input{Hosts: []Host{host}}, nil
}

// kinetoHeader reads a trace's first events for distributedInfo (rank -1
// when it has none) and refuses a file that is JSON but not a Kineto
// trace: no traceEvents, or neither Kineto's schemaVersion nor any of its
// event categories.
func kinetoHeader(path string) (rank, worldSize int, err error) {
	f, err := os.Open(path)
	if err != nil {
		return -1, 0, err
	}
	defer f.Close()
	r, err := kineto.NewReader(f, kineto.Limits{})
	if err != nil {
		return -1, 0, err
	}
	defer r.Close()
	// Kineto writes schemaVersion before traceEvents; a Chrome trace from
	// another tool has no schemaVersion but may still hold Kineto's events.
	kinetoEvents := false
	n := 0
	for ; n < kinetoProbeEvents; n++ {
		e, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			// Damaged, not foreign: the analyzers name it in a warning and
			// go on with the other ranks.
			return -1, 0, nil
		}
		kinetoEvents = kinetoEvents || kinetoCategories[string(e.Cat)]
		if r.Meta().SchemaVersion > 0 && n > 0 {
			break
		}
	}
	meta := r.Meta()
	switch {
	case n == 0:
		return -1, 0, errors.New("no traceEvents")
	case meta.SchemaVersion <= 0 && !kinetoEvents:
		return -1, 0, fmt.Errorf("no schemaVersion and none of Kineto's event categories (kernel, cpu_op, cuda_runtime, ...) in its first %d events", n)
	}
	return clampInt(meta.Rank), max(clampInt(meta.WorldSize), 0), nil
}

// kinetoProbeEvents is how many events kinetoHeader reads at most.
const kinetoProbeEvents = 1000

// kinetoCategories are event categories that only Kineto writes.
var kinetoCategories = map[string]bool{
	"kernel": true, "gpu_memcpy": true, "gpu_memset": true, "cuda_runtime": true, "cuda_driver": true,
	"cpu_op": true, "user_annotation": true, "gpu_user_annotation": true, "python_function": true, "ac2g": true,
}

// sanitizeComponent makes s a valid object key component.
func sanitizeComponent(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !isKeyByte(c) {
			b[i] = '_'
		}
	}
	if len(b) == 0 || !isAlnumByte(b[0]) {
		b = append([]byte{'k'}, b...)
	}
	if len(b) > 128 {
		b = b[:128]
	}
	return string(b)
}

func isAlnumByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func isKeyByte(c byte) bool { return isAlnumByte(c) || c == '.' || c == '_' || c == '-' }
