package findings

import (
	"cmp"
	"slices"
	"sort"
	"time"

	"github.com/loupe-dev/loupe/traces"
)

// ProfileRef is one continuous CPU profile bundle in the store.
type ProfileRef struct {
	// Key is the object key of its manifest.
	Key                     string
	Cluster, Job, Run, Host string
	Start, End              time.Time
}

// ProfileQuery selects continuous profiles: those of the cluster, job and
// host given (any, when empty) that overlap [From, To).
type ProfileQuery struct {
	Cluster, Job, Host string
	From, To           time.Time
}

// profileSeries is one job run's continuous profiles on one host, the
// intervals sorted by start: 16 bytes an interval, so a week of one-minute
// profiles of 100 hosts takes about 16 MB.
type profileSeries struct {
	cluster, job, run, host string
	slots                   []profileSlot
}

type profileSlot struct {
	start int64  // Unix seconds
	secs  uint32 // interval length
	gen   uint32 // listing generation that last saw it
}

type seriesKey struct{ cluster, job, run, host string }

// AddProfile records the continuous profile whose manifest key is key,
// from the key alone; it reports false for any other key.
func (ix *Index) AddProfile(key string) bool {
	k, name, err := traces.ParseKey(key)
	if err != nil || name != traces.ManifestName || !traces.IsContinuous(k.Capture) {
		return false
	}
	start, d, err := traces.ParseContinuousCaptureID(k.Capture)
	if err != nil {
		return false
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.profiles == nil {
		ix.profiles = map[seriesKey]*profileSeries{}
	}
	sk := seriesKey{k.Cluster, k.Job, k.Run, k.Host}
	s := ix.profiles[sk]
	if s == nil {
		s = &profileSeries{cluster: k.Cluster, job: k.Job, run: k.Run, host: k.Host}
		ix.profiles[sk] = s
	}
	slot := profileSlot{start: start.Unix(), secs: uint32(d / time.Second), gen: ix.profileGen}
	i, found := slices.BinarySearchFunc(s.slots, slot.start, func(a profileSlot, t int64) int { return cmp.Compare(a.start, t) })
	if found {
		s.slots[i] = slot
	} else {
		s.slots = slices.Insert(s.slots, i, slot)
	}
	return true
}

// BeginProfileListing starts a full listing of the store: profiles it does
// not see again are dropped by EndProfileListing.
func (ix *Index) BeginProfileListing() {
	ix.mu.Lock()
	ix.profileGen++
	ix.mu.Unlock()
}

// EndProfileListing drops the profiles the listing begun last did not see
// (retention deleted them) and returns how many it dropped.
func (ix *Index) EndProfileListing() int {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	n := 0
	for k, s := range ix.profiles {
		kept := s.slots[:0]
		for _, sl := range s.slots {
			if sl.gen == ix.profileGen {
				kept = append(kept, sl)
			}
		}
		n += len(s.slots) - len(kept)
		s.slots = kept
		if len(kept) == 0 {
			delete(ix.profiles, k)
		}
	}
	return n
}

// Profiles returns the continuous profiles the query selects, oldest
// first (then by job, run and host).
func (ix *Index) Profiles(q ProfileQuery) []ProfileRef {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	from, to := q.From.Unix(), q.To.Unix()
	var out []ProfileRef
	for _, s := range ix.profiles {
		if !match(q.Cluster, s.cluster) || !match(q.Job, s.job) || !match(q.Host, s.host) {
			continue
		}
		// Intervals are at most a day long: start from the first one
		// that could still reach from.
		i := sort.Search(len(s.slots), func(i int) bool { return s.slots[i].start > from-24*3600 })
		for _, sl := range s.slots[i:] {
			if sl.start >= to {
				break
			}
			if sl.start+int64(sl.secs) <= from {
				continue
			}
			start := time.Unix(sl.start, 0).UTC()
			d := time.Duration(sl.secs) * time.Second
			id := traces.ContinuousCaptureID(start, d)
			out = append(out, ProfileRef{
				Key:     traces.Key{Cluster: s.cluster, Job: s.job, Run: s.run, Capture: id, Host: s.host}.Object(traces.ManifestName),
				Cluster: s.cluster, Job: s.job, Run: s.run, Host: s.host, Start: start, End: start.Add(d),
			})
		}
	}
	slices.SortFunc(out, func(a, b ProfileRef) int {
		return cmp.Or(a.Start.Compare(b.Start), cmp.Compare(a.Job, b.Job), cmp.Compare(a.Run, b.Run), cmp.Compare(a.Host, b.Host))
	})
	return out
}
