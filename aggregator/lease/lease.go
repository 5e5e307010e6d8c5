// Package lease gives one aggregator replica exclusive, expiring ownership
// of a piece of work, using nothing but conditional puts on the object store.
//
// A lease is a small JSON object. It is taken by creating it only if absent
// (If-None-Match: *), renewed by replacing it only if its ETag is the one the
// owner last wrote (If-Match), and taken over, once its expiry has passed,
// by a conditional replace of the ETag the taker read. Whoever loses a race
// gets store.ErrPrecondition from the store and backs off, so at most one
// replica holds a lease at a time. Expiry is judged by the reader's clock:
// keep the TTL well above the clock skew between replicas.
package lease

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/loupe-dev/loupe/traces/store"
)

// ErrHeld is returned by Acquire when another owner holds an unexpired lease.
var ErrHeld = errors.New("lease held by another owner")

// ErrLost is returned by Renew and Hold when the lease was taken over.
var ErrLost = errors.New("lease lost")

// Record is the stored form of a lease.
type Record struct {
	Owner    string    `json:"owner"`
	Acquired time.Time `json:"acquired"`
	Expires  time.Time `json:"expires"`
	// Released is set when the owner gave the lease up before expiry.
	Released bool `json:"released,omitempty"`
}

// Manager takes leases on behalf of one owner.
type Manager struct {
	Store store.Store
	// Owner identifies this replica in lease records (host name and pid, say).
	Owner string
	// TTL is how long a lease lasts without renewal.
	TTL time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

func (m *Manager) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

// Lease is a held lease.
type Lease struct {
	m    *Manager
	key  string
	etag string
	rec  Record
}

// Key is the object key of the lease.
func (l *Lease) Key() string { return l.key }

// Expires is when the lease lapses unless renewed.
func (l *Lease) Expires() time.Time { return l.rec.Expires }

// HeldError says who holds a lease and until when.
type HeldError struct {
	Key     string
	Owner   string
	Expires time.Time
}

// Error says who holds the lease and until when.
func (e *HeldError) Error() string {
	return fmt.Sprintf("lease %s held by %s until %s", e.Key, e.Owner, e.Expires.UTC().Format(time.RFC3339))
}

// Unwrap makes errors.Is(err, ErrHeld) true.
func (e *HeldError) Unwrap() error { return ErrHeld }

// Acquire takes the lease at key: it creates it when absent, or takes it
// over when it expired or was released. It returns a *HeldError (matching
// ErrHeld) when another owner holds it.
func (m *Manager) Acquire(ctx context.Context, key string) (*Lease, error) {
	if m.TTL <= 0 {
		return nil, fmt.Errorf("lease %s: TTL must be positive, got %v", key, m.TTL)
	}
	now := m.now()
	rec := Record{Owner: m.Owner, Acquired: now.UTC(), Expires: now.Add(m.TTL).UTC()}
	// Two rounds: the lease may vanish between a failed create and the read.
	for range 2 {
		etag, err := m.put(ctx, key, rec, store.PutOptions{IfNoneMatch: true})
		if err == nil {
			return &Lease{m: m, key: key, etag: etag, rec: rec}, nil
		}
		if !errors.Is(err, store.ErrPrecondition) {
			return nil, err
		}
		cur, curTag, err := m.read(ctx, key)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil && !errors.Is(err, errCorrupt) {
			return nil, err
		}
		// A corrupt record cannot name an owner; it is taken over like an
		// expired one.
		if err == nil && !cur.Released && now.Before(cur.Expires) {
			return nil, &HeldError{Key: key, Owner: cur.Owner, Expires: cur.Expires}
		}
		etag, err = m.put(ctx, key, rec, store.PutOptions{IfMatch: curTag})
		if errors.Is(err, store.ErrPrecondition) {
			// Another replica took it over first.
			return nil, &HeldError{Key: key, Owner: "(another replica)", Expires: rec.Expires}
		}
		if err != nil {
			return nil, err
		}
		return &Lease{m: m, key: key, etag: etag, rec: rec}, nil
	}
	return nil, fmt.Errorf("lease %s: created and deleted repeatedly by others; try again", key)
}

// Renew extends the lease by the manager's TTL. It returns ErrLost when
// another owner took the lease over (the lease had expired).
func (l *Lease) Renew(ctx context.Context) error {
	rec := l.rec
	rec.Expires = l.m.now().Add(l.m.TTL).UTC()
	return l.replace(ctx, rec)
}

// Release gives the lease up, so that others need not wait for expiry. The
// record stays, marked released, naming the last owner.
func (l *Lease) Release(ctx context.Context) error {
	rec := l.rec
	rec.Released = true
	rec.Expires = l.m.now().UTC()
	return l.replace(ctx, rec)
}

func (l *Lease) replace(ctx context.Context, rec Record) error {
	etag, err := l.m.put(ctx, l.key, rec, store.PutOptions{IfMatch: l.etag})
	if errors.Is(err, store.ErrPrecondition) {
		return fmt.Errorf("%w: %s was taken over by another owner", ErrLost, l.key)
	}
	if err != nil {
		return err
	}
	l.etag, l.rec = etag, rec
	return nil
}

// Hold runs fn while renewing the lease every third of its TTL. If a
// renewal finds the lease lost, fn's context is cancelled and Hold returns
// ErrLost; a renewal that fails for another reason is retried until the
// lease would lapse. The lease is not released: the caller decides.
func (l *Lease) Hold(ctx context.Context, fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan struct{})
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		t := time.NewTicker(l.m.TTL / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				err := l.Renew(ctx)
				if errors.Is(err, ErrLost) || (err != nil && !l.m.now().Before(l.rec.Expires)) {
					cancel(fmt.Errorf("%w: %v", ErrLost, err))
					return
				}
			}
		}
	}()
	err := fn(ctx)
	close(done)
	<-renewed
	if cause := context.Cause(ctx); errors.Is(cause, ErrLost) {
		return cause
	}
	return err
}

var errCorrupt = errors.New("corrupt lease record")

func (m *Manager) read(ctx context.Context, key string) (Record, string, error) {
	rc, info, err := m.Store.Get(ctx, key)
	if err != nil {
		return Record{}, "", err
	}
	defer rc.Close()
	var rec Record
	data, err := io.ReadAll(io.LimitReader(rc, 64<<10))
	if err != nil {
		return Record{}, "", fmt.Errorf("read lease %s: %w", key, err)
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		return Record{}, info.ETag, fmt.Errorf("%w %s: %v", errCorrupt, key, err)
	}
	return rec, info.ETag, nil
}

func (m *Manager) put(ctx context.Context, key string, rec Record, opts store.PutOptions) (string, error) {
	data, err := json.Marshal(rec)
	if err != nil {
		return "", err
	}
	opts.ContentType = "application/json"
	info, err := m.Store.Put(ctx, key, bytes.NewReader(data), int64(len(data)), opts)
	if err != nil {
		return "", fmt.Errorf("write lease %s: %w", key, err)
	}
	return info.ETag, nil
}
