package analyzers

import (
	"errors"
	"sync"
	"unsafe"
)

// tableCache lets the analyzers of one run share decoded Parquet tables, so
// that a table several analyzers read is decoded once rather than once per
// analyzer. Analyzers walk the hosts in the same order; the first to reach
// a host decodes its table while the others wait for that decode (giving up
// their CPU slot meanwhile), which keeps them close together. Memory is
// bounded by a budget, whatever the capture's size: the least recently used
// tables are dropped beyond it, and a table larger than a quarter of the
// budget is never cached; each analyzer then streams it itself.
type tableCache struct {
	budget int64

	mu      sync.Mutex
	entries map[cacheKey]*cacheEntry
	used    int64
	clock   uint64
}

// DefaultCacheBudget is the memory the runner spends on shared tables.
const DefaultCacheBudget = 32 << 20

type cacheKey struct {
	host int
	part string
}

type cacheEntry struct {
	ready   chan struct{} // closed once rows, big and err are set
	rows    any           // []T
	size    int64
	big     bool // too large to cache
	err     error
	lastUse uint64
}

// errTooBig stops decoding a table that will not be cached.
var errTooBig = errors.New("table too large to cache")

func newTableCache(budget int64) *tableCache {
	return &tableCache{budget: budget, entries: map[cacheKey]*cacheEntry{}}
}

// cachedRows returns host i's table from the cache, decoding it if this is
// the first reader. ok is false when the table is too large to cache and
// the caller must stream it itself.
func cachedRows[T any](pass *Pass, i int, part string) (rows []T, ok bool, err error) {
	c := pass.cache
	k := cacheKey{i, part}
	c.mu.Lock()
	e := c.entries[k]
	if e == nil {
		e = &cacheEntry{ready: make(chan struct{})}
		c.entries[k] = e
		c.mu.Unlock()
		fill[T](pass, e, i, part)
	} else {
		c.mu.Unlock()
		if err := pass.wait(e.ready); err != nil {
			return nil, false, err
		}
	}
	c.mu.Lock()
	c.clock++
	e.lastUse = c.clock
	c.mu.Unlock()
	if e.big || e.err != nil {
		return nil, false, e.err
	}
	return e.rows.([]T), true, nil
}

// fill decodes host i's table into e and publishes it; waiters are
// released even if decoding panics.
func fill[T any](pass *Pass, e *cacheEntry, i int, part string) {
	c := pass.cache
	rowSize := int64(unsafe.Sizeof(*new(T)))
	var rows []T
	err := errors.New("decoding panicked")
	defer func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		switch {
		case errors.Is(err, errTooBig):
			e.big = true
		case err != nil:
			e.err = err
		default:
			e.rows, e.size = rows, int64(len(rows))*rowSize
			c.used += e.size
			c.evict(e)
		}
		close(e.ready)
	}()
	rows, err = decodeAll[T](pass, &pass.Input.Hosts[i], part, c.budget/4/rowSize)
}

// evict drops the least recently used decoded tables, other than keep,
// until the cache is within its budget. Readers still holding a dropped
// table keep it alive until they are done with it.
func (c *tableCache) evict(keep *cacheEntry) {
	for c.used > c.budget {
		var victim cacheKey
		var ve *cacheEntry
		for k, e := range c.entries {
			if e == keep || e.size == 0 {
				continue
			}
			if ve == nil || e.lastUse < ve.lastUse {
				victim, ve = k, e
			}
		}
		if ve == nil {
			return
		}
		delete(c.entries, victim)
		c.used -= ve.size
	}
}

// decodeAll decodes host h's table, failing with errTooBig past maxRows.
func decodeAll[T any](pass *Pass, h *Host, part string, maxRows int64) ([]T, error) {
	var rows []T
	buf := make([]T, batchRows)
	err := scanTable(pass.Context, h, part, buf, func(n int64) error {
		if n > maxRows {
			return errTooBig
		}
		rows = make([]T, 0, n)
		return nil
	}, func(batch []T) error {
		rows = append(rows, batch...)
		return nil
	})
	return rows, err
}
