package analyzers

import (
	"errors"
	"maps"
	"sync"
	"unsafe"

	"github.com/loupe-dev/loupe/traces"
)

// tableCache lets the analyzers of one run share decoded Parquet tables, so
// that a table several analyzers read is decoded once rather than once per
// analyzer. Analyzers walk the hosts in the same order; the first to reach
// a host decodes its table while the others wait for that decode (giving up
// their CPU slot meanwhile), which keeps them close together. Memory is
// bounded by a budget, whatever the capture's size: the least recently used
// tables are dropped beyond it, and a table larger than a third of the
// budget is never cached; each analyzer then streams it itself. Readers move
// through the hosts together (Pass.yield), so a few hosts' tables in the
// cache are enough for all of them to share each decode.
type tableCache struct {
	budget int64

	mu      sync.Mutex
	entries map[cacheKey]*cacheEntry
	readers map[string]map[*Pass]bool // part -> the passes that will read it
	used    int64
	clock   uint64
}

// DefaultCacheBudget is the memory the runner spends on shared tables: a
// host's 60 s of GPU samples at 100 Hz (8 GPUs, about 10 MiB decoded) and
// more fit in a third of it.
const DefaultCacheBudget = 64 << 20

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
	// pending are the readers registered for the part when the entry was
	// made that have not read it yet; the entry is dropped when the last of
	// them has, so the cache holds only the hosts between the slowest
	// reader and the fastest.
	pending map[*Pass]bool
}

// errTooBig stops decoding a table that will not be cached.
var errTooBig = errors.New("table too large to cache")

func newTableCache(budget int64) *tableCache {
	return &tableCache{budget: budget, entries: map[cacheKey]*cacheEntry{}, readers: map[string]map[*Pass]bool{}}
}

// join registers p as a reader of part, so that entries made from now on
// wait for p to read them (or to leave).
func (c *tableCache) join(p *Pass, part string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.readers[part] == nil {
		c.readers[part] = map[*Pass]bool{}
	}
	c.readers[part][p] = true
}

// leave ends p's reading of part: entries stop waiting for p.
func (c *tableCache) leave(p *Pass, part string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.leaveLocked(p, part)
}

// leaveAll ends p's reading of every part.
func (c *tableCache) leaveAll(p *Pass) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for part := range c.readers {
		c.leaveLocked(p, part)
	}
}

func (c *tableCache) leaveLocked(p *Pass, part string) {
	if !c.readers[part][p] {
		return
	}
	delete(c.readers[part], p)
	for k, e := range c.entries {
		if k.part == part {
			c.read(k, e, p)
		}
	}
}

// read records that p has read entry e (c.mu held), dropping e when no
// reader is left to read it.
func (c *tableCache) read(k cacheKey, e *cacheEntry, p *Pass) {
	delete(e.pending, p)
	select {
	case <-e.ready:
	default:
		return // its filler reads it once filled
	}
	if len(e.pending) == 0 && c.entries[k] == e {
		delete(c.entries, k)
		c.used -= e.size
	}
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
		e = &cacheEntry{ready: make(chan struct{}), pending: maps.Clone(c.readers[part])}
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
	c.read(k, e, pass)
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
	rows, err = decodeAll[T](pass, &pass.Input.Hosts[i], part, c.budget/3/rowSize)
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
	err := scanTable(pass.Context, h, part, buf, func(batch []T) error {
		rows = append(rows, batch...)
		return nil
	}, traces.RowCount(func(n int64) error {
		if n > maxRows {
			return errTooBig
		}
		rows = make([]T, 0, n)
		return nil
	}))
	return rows, err
}
