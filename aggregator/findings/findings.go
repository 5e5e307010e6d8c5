// Package findings stores what the analyzers concluded about a job capture,
// beside the capture itself, and keeps an in-memory index of it for the API.
//
// Layout, under each capture folder v1/<cluster>/<job>/<run>/<capture>/:
//
//	_findings/findings.json   the Record: every finding of the capture, the
//	                          manifests (hosts) it was computed from, the
//	                          analyzer versions, and partial/missing ranks.
//	                          Written last, as one object, so it is the
//	                          commit marker of an analysis; replaced (with
//	                          If-Match on its ETag) when the capture is
//	                          re-analyzed or backfilled.
//	_findings/lease.json      the work lease (package lease) that makes one
//	                          replica at a time analyze the capture.
//
// The "_findings" folder cannot be mistaken for a host folder: key
// components must start with a letter or digit (traces.ValidateComponent).
// Findings carry their own lineage (the part keys read and the analyzer
// versions of the run), so a record can be audited without the aggregator.
package findings

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/loupe-dev/loupe/aggregator/capture"
	"github.com/loupe-dev/loupe/traces"
	"github.com/loupe-dev/loupe/traces/store"
)

// Object names inside a capture folder.
const (
	RecordName = traces.FindingsDir + "/findings.json"
	LeaseName  = traces.FindingsDir + "/lease.json"
)

// RecordVersion is the format version of findings.json.
const RecordVersion = 1

// maxRecordSize bounds the findings.json a reader will decode.
const maxRecordSize = 64 << 20

// RecordKey is the key of a capture's findings.json.
func RecordKey(id capture.ID) string { return id.Prefix() + RecordName }

// LeaseKey is the key of a capture's work lease.
func LeaseKey(id capture.ID) string { return id.Prefix() + LeaseName }

// Record is the stored result of analyzing one job capture.
type Record struct {
	Version int        `json:"version"`
	Capture capture.ID `json:"capture"`
	// Analyzed is when the latest analysis (or backfill) finished.
	Analyzed time.Time `json:"analyzed"`
	// Analyst is the replica that wrote the record.
	Analyst string `json:"analyst,omitempty"`
	// Manifests are the keys of the host manifests the findings were
	// computed from; a capture whose manifests changed is re-analyzed.
	Manifests []string `json:"manifests"`
	// Hosts summarize those manifests, so that the index can be rebuilt
	// from records alone.
	Hosts     []HostSummary `json:"hosts"`
	WorldSize int           `json:"world_size"`
	// Start and End are the capture window; Parts counts the hosts holding
	// each part (Capture.Parts), so that goodput knows what each window of
	// a run could measure without reading its manifests.
	Start time.Time      `json:"start,omitzero"`
	End   time.Time      `json:"end,omitzero"`
	Parts map[string]int `json:"parts,omitempty"`
	// Partial is set when the capture was analyzed without every rank, after
	// the partition timeout; MissingRanks names the ranks that never came.
	Partial      bool  `json:"partial,omitempty"`
	MissingRanks []int `json:"missing_ranks,omitempty"`
	Simulated    bool  `json:"simulated,omitempty"`
	// AnalyzerVersions maps every analyzer that ran to its version.
	AnalyzerVersions map[string]string `json:"analyzer_versions"`
	// Errors are analyzer failures, one line each; the other analyzers'
	// findings are still recorded.
	Errors   []string         `json:"errors,omitempty"`
	Findings []traces.Finding `json:"findings"`
}

// Stale returns the analyzers in want whose version differs from the one
// the record was computed with (or that did not run at all).
func (r *Record) Stale(want map[string]string) []string {
	var stale []string
	for name, v := range want {
		if r.AnalyzerVersions[name] != v {
			stale = append(stale, name)
		}
	}
	return stale
}

// Read fetches the capture's record and its ETag. It returns an error
// matching store.ErrNotFound when the capture was never analyzed, and one
// matching ErrRecord (with the ETag) when the record cannot be decoded.
func Read(ctx context.Context, st store.Store, id capture.ID) (*Record, string, error) {
	key := RecordKey(id)
	rc, info, err := st.Get(ctx, key)
	if err != nil {
		return nil, "", err
	}
	defer rc.Close()
	rec, err := Decode(rc)
	if err != nil {
		// The ETag still lets the caller replace the bad record.
		return nil, info.ETag, fmt.Errorf("findings %s: %w", key, err)
	}
	return rec, info.ETag, nil
}

// ErrRecord reports a findings.json that cannot be used.
var ErrRecord = errors.New("invalid findings record")

// Decode reads a findings.json, bounded in size.
func Decode(r io.Reader) (*Record, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxRecordSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxRecordSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrRecord, maxRecordSize)
	}
	var rec Record
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRecord, err)
	}
	if rec.Version != RecordVersion {
		return nil, fmt.Errorf("%w: version %d, this build reads %d; upgrade the aggregator", ErrRecord, rec.Version, RecordVersion)
	}
	if err := rec.Capture.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrRecord, err)
	}
	return &rec, nil
}

// Write stores rec as the capture's findings.json. With ifMatch empty it
// creates the record only if none exists; otherwise it replaces the record
// only if its ETag is still ifMatch. Either way a concurrent writer makes it
// fail with store.ErrPrecondition, so a result is never silently lost or
// written twice. It returns the new ETag.
func Write(ctx context.Context, st store.Store, rec *Record, ifMatch string) (string, error) {
	rec.Version = RecordVersion
	data, err := json.MarshalIndent(rec, "", " ")
	if err != nil {
		return "", fmt.Errorf("encode findings of %s: %w", rec.Capture, err)
	}
	opts := store.PutOptions{ContentType: traces.MediaJSON, IfMatch: ifMatch, IfNoneMatch: ifMatch == ""}
	info, err := st.Put(ctx, RecordKey(rec.Capture), bytes.NewReader(data), int64(len(data)), opts)
	if err != nil {
		return "", fmt.Errorf("write findings of %s: %w", rec.Capture, err)
	}
	return info.ETag, nil
}
