// Package store is Loupe's object store: a small interface with two
// implementations, S3-compatible servers through minio-go and a local
// directory (the embedded default). Open selects one from a URL:
//
//	file:///var/lib/loupe/store
//	s3://BUCKET/PREFIX?endpoint=HOST:PORT&secure=false&region=R
//
// Keys are slash-separated; see traces.Key for the layout Loupe uses.
//
// Conditional puts (PutOptions.IfNoneMatch and IfMatch) are what the
// aggregator's leases and first-writer-wins manifests rest on, so an S3
// server must enforce If-None-Match: * and If-Match on PUT atomically. The
// conformance suite checks both, with racing writers, against:
//
//   - MinIO (the version miniotest pins): supported.
//   - versitygw v1.8.0, posix backend (versitygwtest): supported; answers
//     412 PreconditionFailed, and 404 for If-Match on a missing object. It
//     is atomic across several gateways on one shared file system only with
//     its object lock files, which are on by default: do not run it with
//     --disable-object-lock-file.
//   - AWS S3: supported since August 2024 (If-None-Match) and November 2024
//     (If-Match); not run by the tests here.
//
// The S3 store sends every conditional object in a single PUT (so at most
// 5 GiB on AWS S3): AWS S3 and versitygw check conditions only on PUT and
// CompleteMultipartUpload, and minio-go sends them on CreateMultipartUpload
// instead, so a multipart conditional put would silently overwrite there.
// A server that ignores these headers would let two aggregators hold one
// lease; do not point Loupe at one.
package store

import (
	"context"
	"errors"
	"io"
	"time"
)

// Errors every implementation returns (wrapped with detail).
var (
	// ErrNotFound: no object at that key.
	ErrNotFound = errors.New("object not found")
	// ErrPrecondition: a conditional put failed (the object exists for
	// IfNoneMatch, or its ETag differs for IfMatch).
	ErrPrecondition = errors.New("precondition failed")
)

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Key          string
	Size         int64
	ETag         string
	LastModified time.Time
}

// PutOptions tune Put.
type PutOptions struct {
	ContentType string
	// IfNoneMatch makes Put create the object only if it does not exist yet.
	IfNoneMatch bool
	// IfMatch, when set, makes Put replace the object only if its ETag is this.
	IfMatch string
}

// Store is an object store.
type Store interface {
	// Put stores size bytes from r at key. size may be -1 when unknown.
	Put(ctx context.Context, key string, r io.Reader, size int64, opts PutOptions) (ObjectInfo, error)
	// Get opens the object at key. The caller closes it.
	Get(ctx context.Context, key string) (io.ReadCloser, ObjectInfo, error)
	// Stat describes the object at key.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// List returns up to limit objects whose keys start with prefix and sort
	// after cursor (lexically), and the cursor to continue from; an empty
	// next cursor means the listing is complete.
	List(ctx context.Context, prefix, cursor string, limit int) (objs []ObjectInfo, next string, err error)
	// Delete removes the object at key; deleting a missing object is not an error.
	Delete(ctx context.Context, key string) error
}
