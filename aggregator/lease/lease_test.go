package lease_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/aggregator/internal/aggtest"
	"github.com/loupe-dev/loupe/aggregator/lease"
	"github.com/loupe-dev/loupe/traces/store"
	"github.com/loupe-dev/loupe/traces/store/miniotest"
)

// stores runs fn against a directory store and a real MinIO server: the
// lease protocol is only as good as the conditional puts under it.
func stores(t *testing.T, fn func(t *testing.T, st store.Store)) {
	t.Run("dir", func(t *testing.T) {
		st, err := store.NewDir(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		fn(t, st)
	})
	t.Run("minio", func(t *testing.T) {
		fn(t, miniotest.Start(t).Store(t))
	})
}

func TestLeaseLifecycle(t *testing.T) {
	stores(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		clock := aggtest.NewClock(time.Now())
		a := &lease.Manager{Store: st, Owner: "a", TTL: time.Minute, Now: clock.Now}
		b := &lease.Manager{Store: st, Owner: "b", TTL: time.Minute, Now: clock.Now}
		const key = "leases/x"

		la, err := a.Acquire(ctx, key)
		if err != nil {
			t.Fatalf("first acquire: %v", err)
		}
		_, err = b.Acquire(ctx, key)
		var held *lease.HeldError
		if !errors.As(err, &held) || held.Owner != "a" || !errors.Is(err, lease.ErrHeld) {
			t.Fatalf("second owner got %v, want held by a", err)
		}
		clock.Advance(50 * time.Second)
		if err := la.Renew(ctx); err != nil {
			t.Fatalf("renew: %v", err)
		}
		clock.Advance(50 * time.Second) // 100 s after acquiring, 50 s after renewal
		if _, err := b.Acquire(ctx, key); !errors.Is(err, lease.ErrHeld) {
			t.Fatalf("renewed lease taken: %v", err)
		}
		clock.Advance(11 * time.Second) // expired
		lb, err := b.Acquire(ctx, key)
		if err != nil {
			t.Fatalf("take over expired lease: %v", err)
		}
		if err := la.Renew(ctx); !errors.Is(err, lease.ErrLost) {
			t.Fatalf("renewing a taken-over lease: %v, want ErrLost", err)
		}
		if err := la.Release(ctx); !errors.Is(err, lease.ErrLost) {
			t.Fatalf("releasing a taken-over lease: %v, want ErrLost", err)
		}
		if err := lb.Release(ctx); err != nil {
			t.Fatalf("release: %v", err)
		}
		// Released: free at once, before its expiry.
		if _, err := a.Acquire(ctx, key); err != nil {
			t.Fatalf("acquire after release: %v", err)
		}
	})
}

// TestLeaseRace has many owners race for one lease, repeatedly: exactly
// one wins each round.
func TestLeaseRace(t *testing.T) {
	stores(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		for round := range 5 {
			key := "leases/race-" + string(rune('a'+round))
			var wins atomic.Int32
			var wg sync.WaitGroup
			for i := range 8 {
				m := &lease.Manager{Store: st, Owner: string(rune('A' + i)), TTL: time.Minute}
				wg.Go(func() {
					_, err := m.Acquire(ctx, key)
					switch {
					case err == nil:
						wins.Add(1)
					case !errors.Is(err, lease.ErrHeld):
						t.Errorf("acquire: %v", err)
					}
				})
			}
			wg.Wait()
			if wins.Load() != 1 {
				t.Fatalf("round %d: %d winners, want 1", round, wins.Load())
			}
		}
	})
}

func TestHoldCancelsWhenLost(t *testing.T) {
	st, err := store.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m := &lease.Manager{Store: st, Owner: "a", TTL: 300 * time.Millisecond}
	l, err := m.Acquire(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	// Held across several renewals.
	if err := l.Hold(ctx, func(ctx context.Context) error {
		time.Sleep(400 * time.Millisecond)
		return ctx.Err()
	}); err != nil {
		t.Fatalf("hold across renewals: %v", err)
	}
	err = l.Hold(ctx, func(ctx context.Context) error {
		// Someone overwrites the lease behind the owner's back.
		if _, err := st.Put(ctx, "k", nil, 0, store.PutOptions{}); err != nil {
			return err
		}
		<-ctx.Done()
		return ctx.Err()
	})
	if !errors.Is(err, lease.ErrLost) {
		t.Fatalf("hold after takeover: %v, want ErrLost", err)
	}
}

func TestCorruptLeaseTakenOver(t *testing.T) {
	st, err := store.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := st.Put(ctx, "k", strings.NewReader("{not json"), 9, store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	m := &lease.Manager{Store: st, Owner: "a", TTL: time.Minute}
	if _, err := m.Acquire(ctx, "k"); err != nil {
		t.Fatalf("acquire over a corrupt record: %v", err)
	}
}
