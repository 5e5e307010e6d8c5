// Package store is Loupe's object store: a small interface with two
// implementations, S3-compatible servers through minio-go and a local
// directory (the embedded default). Open selects one from a URL:
//
//	file:///var/lib/loupe/store
//	s3://BUCKET/PREFIX?endpoint=HOST:PORT&secure=false&region=R
//
// Keys are slash-separated; see traces.Key for the layout Loupe uses.
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
