package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/klauspost/compress/gzip"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/aggregator/httpjson"
	"github.com/loupe-dev/loupe/analyzers/kineto"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// Bounds of one trace export, which holds the hosts' tables in memory.
const (
	// maxTraceHosts bounds a whole-capture export; name a host for more.
	maxTraceHosts = 16
	// maxTraceBytes bounds the parts read for one export.
	maxTraceBytes = 1 << 30
)

// trace exports a capture (or one host of it) as Chrome trace JSON, which
// Perfetto and chrome://tracing open.
func (s *Server) trace(w http.ResponseWriter, r *http.Request) {
	tls, name, err := s.timelines(r)
	if err != nil {
		httpjson.Answer(w, r, s.log, nil, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", name))
	w.Header().Set("Vary", "Accept-Encoding")
	out := io.Writer(w)
	if acceptsGzip(r) {
		// A host's 20 s export is about 10 MB of JSON and a tenth of that
		// compressed; browsers and curl --compressed undo it.
		w.Header().Set("Content-Encoding", "gzip")
		gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
		defer gz.Close()
		out = gz
	}
	if err := traces.ExportChrome(out, tls...); err != nil {
		// Headers are gone; the truncated body tells the client.
		s.log.Warn("trace export failed", "path", r.URL.Path, "err", err)
	}
}

// acceptsGzip reports whether the request's Accept-Encoding allows gzip.
func acceptsGzip(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept-Encoding") {
		for _, enc := range strings.Split(v, ",") {
			name, q, _ := strings.Cut(strings.TrimSpace(enc), ";")
			if strings.EqualFold(strings.TrimSpace(name), "gzip") && strings.ReplaceAll(strings.TrimSpace(q), " ", "") != "q=0" {
				return true
			}
		}
	}
	return false
}

func (s *Server) timelines(r *http.Request) ([]traces.Timeline, string, error) {
	q, err := httpjson.Query(r, "host")
	if err != nil {
		return nil, "", err
	}
	host, err := httpjson.Component(q, "host")
	if err != nil {
		return nil, "", err
	}
	id, err := captureID(r)
	if err != nil {
		return nil, "", err
	}
	c, err := capture.Load(r.Context(), s.cfg.Store, id, nil)
	if err != nil {
		return nil, "", err
	}
	var hosts []capture.Host
	for _, h := range c.Hosts {
		if host == "" || h.Manifest.Host == host {
			hosts = append(hosts, h)
		}
	}
	switch {
	case len(hosts) == 0 && host != "":
		return nil, "", fmt.Errorf("capture %s: %w: no committed bundle of host %q", id, store.ErrNotFound, host)
	case len(hosts) == 0:
		return nil, "", fmt.Errorf("capture %s: %w: no committed host manifest", id, store.ErrNotFound)
	case len(hosts) > maxTraceHosts:
		return nil, "", httpjson.Bad("capture %s has %d hosts; export at most %d at once, or name one with host=", id, len(hosts), maxTraceHosts)
	}
	budget := int64(maxTraceBytes)
	tls := make([]traces.Timeline, 0, len(hosts))
	for _, h := range hosts {
		tl, err := s.timeline(r.Context(), h.Manifest, &budget)
		if err != nil {
			return nil, "", err
		}
		tls = append(tls, tl)
	}
	name := id.Job + "-" + id.Capture
	if host != "" {
		name += "-" + host
	}
	return tls, name + ".trace.json", nil
}

// timeline reads the parts of one host bundle that the export draws.
func (s *Server) timeline(ctx context.Context, m *traces.Manifest, budget *int64) (traces.Timeline, error) {
	tl := traces.Timeline{Manifest: m}
	var err error
	if tl.Steps, err = readTable[traces.Step](ctx, s, m, traces.PartSteps, budget); err != nil {
		return tl, err
	}
	if tl.NCCL, err = readTable[traces.NCCLEvent](ctx, s, m, traces.PartNCCLEvents, budget); err != nil {
		return tl, err
	}
	if tl.GPU, err = readTable[traces.GPUSample](ctx, s, m, traces.PartGPUSamples, budget); err != nil {
		return tl, err
	}
	if tl.Kernels, err = s.kernels(ctx, m, budget); err != nil {
		return tl, err
	}
	data, err := s.readPart(ctx, m, traces.PartCPUProfile, budget)
	if err != nil {
		return tl, err
	}
	if data != nil {
		if tl.CPU, err = traces.ReadProfile(bytes.NewReader(data)); err != nil {
			return tl, fmt.Errorf("%s: %w", traces.KeyOf(m).Object(traces.PartCPUProfile), err)
		}
	}
	data, err = s.readPart(ctx, m, traces.PartEvents, budget)
	if err != nil || data == nil {
		return tl, err
	}
	err = traces.ReadEvents(bytes.NewReader(data), func(e traces.Event) error {
		tl.Events = append(tl.Events, e)
		return nil
	})
	return tl, err
}

// maxTraceKernels bounds the Kineto kernels one export draws (about 100 MB
// of JSON); the rest are left out and the export says so.
const maxTraceKernels = 500_000

// kernels reads the GPU kernels and memory operations of the bundle's
// Kineto traces, streamed, onto the Unix clock: baseTimeNanoseconds plus
// ts when the trace gives its base, else ts as Kineto's wall-clock
// microseconds. A trace's rank comes from its distributedInfo.
func (s *Server) kernels(ctx context.Context, m *traces.Manifest, budget *int64) ([]traces.Span, error) {
	var out []traces.Span
	for _, p := range m.Parts {
		if !strings.HasPrefix(p.Name, traces.KinetoDir) || len(out) >= maxTraceKernels {
			continue
		}
		if *budget -= p.Size; *budget < 0 {
			return nil, httpjson.Bad("the capture's parts exceed %d bytes for one trace export; name one host with host=", maxTraceBytes)
		}
		key := traces.KeyOf(m).Object(p.Name)
		rc, _, err := s.cfg.Store.Get(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", key, err)
		}
		spans, err := readKernels(traces.VerifyReader(p, rc, s.cfg.MaxPartSize), maxTraceKernels-len(out))
		rc.Close()
		if err != nil {
			// One unreadable trace leaves its kernels out, not the export.
			s.log.Warn("trace export: Kineto trace left out", "key", key, "err", err)
			continue
		}
		out = append(out, spans...)
	}
	return out, nil
}

func readKernels(r io.Reader, limit int) ([]traces.Span, error) {
	kr, err := kineto.NewReader(r, kineto.Limits{})
	if err != nil {
		return nil, err
	}
	defer kr.Close()
	var out []traces.Span
	for {
		e, err := kr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		cat := string(e.Cat)
		if e.Ph != 'X' || !e.HasTs || !e.HasDur || len(out) >= limit || cat != "kernel" && cat != "gpu_memcpy" && cat != "gpu_memset" {
			continue
		}
		track := "stream ?"
		if e.Stream >= 0 {
			track = "stream " + strconv.FormatInt(e.Stream, 10)
		}
		out = append(out, traces.Span{Track: track, Name: string(e.Name), Cat: cat, StartNs: e.Ts, DurNs: e.Dur})
	}
	meta := kr.Meta()
	for i := range out {
		out[i].Rank = int32(meta.Rank)
		if out[i].StartNs < meta.BaseTimeNanoseconds/2 { // relative to the base, not wall-clock already
			out[i].StartNs += meta.BaseTimeNanoseconds
		}
	}
	if meta.Rank < 0 {
		return nil, errors.New("no distributedInfo rank: cannot place its kernels on a rank's timeline")
	}
	return out, nil
}

func readTable[T any](ctx context.Context, s *Server, m *traces.Manifest, name string, budget *int64) ([]T, error) {
	data, err := s.readPart(ctx, m, name, budget)
	if err != nil || data == nil {
		return nil, err
	}
	rows, err := traces.ReadTable[T](bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", traces.KeyOf(m).Object(name), err)
	}
	return rows, nil
}

// readPart reads and verifies one part, or returns nil when the bundle
// has no such part.
func (s *Server) readPart(ctx context.Context, m *traces.Manifest, name string, budget *int64) ([]byte, error) {
	p, ok := m.Part(name)
	if !ok {
		return nil, nil
	}
	if *budget -= p.Size; *budget < 0 {
		return nil, httpjson.Bad("the capture's parts exceed %d bytes for one trace export; name one host with host=", maxTraceBytes)
	}
	key := traces.KeyOf(m).Object(name)
	rc, _, err := s.cfg.Store.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(traces.VerifyReader(p, rc, s.cfg.MaxPartSize))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	return data, nil
}
