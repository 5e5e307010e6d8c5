package views

import (
	"container/list"
	"sync"
)

// cache keeps computed view data within a byte budget, least recently used
// out first. Concurrent requests for the same key share one computation.
type cache struct {
	mu       sync.Mutex
	max, n   int64
	lru      *list.List // of *cacheItem, most recent first
	items    map[string]*list.Element
	inflight map[string]*call
}

type cacheItem struct {
	key  string
	val  any
	size int64
}

// call is one computation others wait for.
type call struct {
	done chan struct{}
	val  any
	err  error
}

func newCache(max int64) *cache {
	return &cache{max: max, lru: list.New(), items: map[string]*list.Element{}, inflight: map[string]*call{}}
}

// get returns the value for key, computing it with load (which returns the
// value and its approximate size in bytes) when it is not cached. Errors
// are not cached: the next request tries again.
func (c *cache) get(key string, load func() (any, int64, error)) (any, error) {
	c.mu.Lock()
	if el, ok := c.items[key]; ok {
		c.lru.MoveToFront(el)
		c.mu.Unlock()
		return el.Value.(*cacheItem).val, nil
	}
	if cl, ok := c.inflight[key]; ok {
		c.mu.Unlock()
		<-cl.done
		return cl.val, cl.err
	}
	cl := &call{done: make(chan struct{})}
	c.inflight[key] = cl
	c.mu.Unlock()

	var size int64
	cl.val, size, cl.err = load()

	c.mu.Lock()
	delete(c.inflight, key)
	if cl.err == nil && size <= c.max {
		c.items[key] = c.lru.PushFront(&cacheItem{key: key, val: cl.val, size: size})
		c.n += size
		for c.n > c.max {
			old := c.lru.Remove(c.lru.Back()).(*cacheItem)
			delete(c.items, old.key)
			c.n -= old.size
		}
	}
	c.mu.Unlock()
	close(cl.done)
	return cl.val, cl.err
}

// bytes is the size of what the cache holds.
func (c *cache) bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}
