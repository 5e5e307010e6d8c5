package analyzers

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"

	"github.com/google/pprof/profile"
	"github.com/loupe-dev/loupe/traces"
)

// batchRows is how many table rows a streaming helper decodes at a time.
const batchRows = 4096

// maxInMemoryPart is the largest part a helper buffers in memory; larger
// Parquet parts (which need random access) are spooled to a temporary file.
const maxInMemoryPart = 64 << 20

// EachGPUSample calls fn for every row of every host's gpu_samples.parquet,
// host by host. The row is only valid during the call.
func EachGPUSample(pass *Pass, fn func(h *Host, s *traces.GPUSample) error) error {
	return eachRow(pass, traces.PartGPUSamples, fn)
}

// EachNCCLEvent calls fn for every row of every host's nccl_events.parquet.
func EachNCCLEvent(pass *Pass, fn func(h *Host, e *traces.NCCLEvent) error) error {
	return eachRow(pass, traces.PartNCCLEvents, fn)
}

// EachStep calls fn for every row of every host's steps.parquet.
func EachStep(pass *Pass, fn func(h *Host, s *traces.Step) error) error {
	return eachRow(pass, traces.PartSteps, fn)
}

// EachStepSpan calls fn for every row of every host's step_history.parquet:
// the run's steps from its first, merged into spans past the head.
func EachStepSpan(pass *Pass, fn func(h *Host, s *traces.StepSpan) error) error {
	return eachRow(pass, traces.PartStepHistory, fn)
}

// EachEvent calls fn for every record of every host's events.jsonl.
func EachEvent(pass *Pass, fn func(h *Host, e *traces.Event) error) error {
	for i := range pass.Input.Hosts {
		h := &pass.Input.Hosts[i]
		if !h.Has(traces.PartEvents) {
			continue
		}
		if err := pass.Context.Err(); err != nil {
			return err
		}
		rc, err := h.Open(pass.Context, traces.PartEvents)
		if err != nil {
			return partErr(h, traces.PartEvents, err)
		}
		pass.Used(h, traces.PartEvents)
		err = traces.ReadEvents(rc, func(e traces.Event) error { return fn(h, &e) })
		rc.Close()
		if err != nil {
			return partErr(h, traces.PartEvents, err)
		}
	}
	return nil
}

// ReadCPUProfile decodes host h's cpu.pb.gz; it returns nil and no error
// when the bundle has none.
func ReadCPUProfile(pass *Pass, h *Host) (*profile.Profile, error) {
	if !h.Has(traces.PartCPUProfile) {
		return nil, nil
	}
	rc, err := h.Open(pass.Context, traces.PartCPUProfile)
	if err != nil {
		return nil, partErr(h, traces.PartCPUProfile, err)
	}
	defer rc.Close()
	pass.Used(h, traces.PartCPUProfile)
	p, err := traces.ReadProfile(rc)
	if err != nil {
		return nil, partErr(h, traces.PartCPUProfile, err)
	}
	return p, nil
}

// ReadBaselineProfile returns host h's normal CPU profile (Host.Baseline),
// recording what it read in the lineage; nil and no error when there is
// none.
func ReadBaselineProfile(pass *Pass, h *Host) (*profile.Profile, error) {
	if h.Baseline == nil {
		return nil, nil
	}
	p, keys, err := h.Baseline(pass.Context)
	if err != nil {
		return nil, fmt.Errorf("host %s: continuous profiles before the window: %w", h.Manifest.Host, err)
	}
	pass.usedKeys(keys...)
	return p, nil
}

// eachRow streams one Parquet table of every host in batches of batchRows,
// through the run's shared cache when there is one. Each row is a copy, so
// an analyzer cannot disturb what the others see.
func eachRow[T any](pass *Pass, part string, fn func(h *Host, row *T) error) error {
	if pass.cache != nil {
		// A second scan of the part by this pass is not waited for.
		defer pass.cache.leave(pass, part)
	}
	var buf []T
	var row T
	for i := range pass.Input.Hosts {
		h := &pass.Input.Hosts[i]
		if !h.Has(part) {
			continue
		}
		pass.Used(h, part)
		pass.yield()
		if pass.cache != nil {
			rows, ok, err := cachedRows[T](pass, i, part)
			if err != nil {
				return err
			}
			if ok {
				for j := range rows {
					if j%batchRows == 0 {
						if err := pass.Context.Err(); err != nil {
							return err
						}
					}
					row = rows[j]
					if err := fn(h, &row); err != nil {
						return err
					}
				}
				continue
			}
		}
		if buf == nil {
			buf = make([]T, batchRows)
		}
		err := scanTable(pass.Context, h, part, buf, func(batch []T) error {
			for j := range batch {
				if err := fn(h, &batch[j]); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// scanTable decodes host h's Parquet part into buf one batch at a time.
func scanTable[T any](ctx context.Context, h *Host, part string, buf []T, fn func([]T) error, opts ...traces.ScanOption) error {
	ra, size, done, err := openAt(ctx, h, part)
	if err != nil {
		return partErr(h, part, err)
	}
	defer done()
	err = traces.ScanTable(ra, size, buf, func(rows []T) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		return fn(rows)
	}, opts...)
	if err != nil {
		return partErr(h, part, err)
	}
	return nil
}

// openAt gives random access to a part, which Parquet needs, reading it
// through Host.Open so that its size and checksum are verified: into memory
// when small, else into a temporary file removed by done.
func openAt(ctx context.Context, h *Host, name string) (ra io.ReaderAt, size int64, done func(), err error) {
	p, ok := h.Manifest.Part(name)
	if !ok {
		return nil, 0, nil, fmt.Errorf("%w: not in manifest", traces.ErrMissingPart)
	}
	rc, err := h.Open(ctx, name)
	if err != nil {
		return nil, 0, nil, err
	}
	defer rc.Close()
	if p.Size <= maxInMemoryPart {
		var buf bytes.Buffer
		buf.Grow(int(p.Size))
		// One byte over the listed size proves the part is longer than listed.
		if _, err := io.Copy(&buf, io.LimitReader(rc, p.Size+1)); err != nil {
			return nil, 0, nil, err
		}
		if int64(buf.Len()) != p.Size {
			return nil, 0, nil, fmt.Errorf("%w: read %d bytes, manifest lists %d", traces.ErrChecksum, buf.Len(), p.Size)
		}
		return bytes.NewReader(buf.Bytes()), p.Size, func() {}, nil
	}
	f, err := os.CreateTemp("", "loupe-part-*")
	if err != nil {
		return nil, 0, nil, fmt.Errorf("spool large part: %w", err)
	}
	done = func() { f.Close(); os.Remove(f.Name()) }
	n, err := io.Copy(f, io.LimitReader(rc, p.Size+1))
	if err == nil && n != p.Size {
		err = fmt.Errorf("%w: read %d bytes, manifest lists %d", traces.ErrChecksum, n, p.Size)
	}
	if err != nil {
		done()
		return nil, 0, nil, err
	}
	return f, n, done, nil
}

// partErr names the part and host an error came from.
func partErr(h *Host, part string, err error) error {
	key := part
	if h.Key != nil {
		key = h.Key(part)
	}
	return fmt.Errorf("host %s part %s: %w", h.Manifest.Host, key, err)
}
