package store

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultListLimit is the page size List uses when asked for limit <= 0.
const DefaultListLimit = 1000

// reservedPrefix marks the directory store's own files at its root (temp
// files, the commit lock); keys whose first component starts with it are
// refused.
const reservedPrefix = ".loupe-"

// etagXattr caches an object's ETag in an extended attribute so Stat and
// List need not re-read the object; when absent (a file system without user
// xattrs, a file copied in by hand) the ETag is computed from the content.
const etagXattr = "user.loupe.md5"

// dirStore keeps each object as a file at root/<key>. Writes go to a temp
// file in root/.loupe-tmp, are fsynced and then renamed (or hard-linked, for
// IfNoneMatch) into place, so a reader sees either the old or the new object,
// never a torn one. ETags are the hex MD5 of the content, as S3 computes for
// single-part uploads.
//
// Limitation: a file system cannot hold both "a" and "a/b", so the directory
// store refuses a key that is a folder of another key; Loupe's key layout
// never does that.
type dirStore struct {
	root, tmp string
	// mu serialises commits inside the process; the flock on tmp/lock does
	// the same across processes sharing the directory.
	mu sync.Mutex
}

// NewDir returns a store kept in the directory root, creating it if needed.
func NewDir(root string) (Store, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("store directory %q: %v", root, err)
	}
	d := &dirStore{root: abs, tmp: filepath.Join(abs, reservedPrefix+"tmp")}
	if err := os.MkdirAll(d.tmp, 0o755); err != nil {
		return nil, fmt.Errorf("store directory %q: %v; create it or point --store at a writable directory", abs, err)
	}
	d.removeStaleTemps()
	return d, nil
}

// staleTemp is the age after which a temp file is taken to be left over by
// a crashed writer; another process sharing the store may still be writing
// younger ones.
const staleTemp = 24 * time.Hour

func (d *dirStore) removeStaleTemps() {
	ents, _ := os.ReadDir(d.tmp)
	for _, e := range ents {
		if info, err := e.Info(); err == nil && strings.HasPrefix(e.Name(), "put-") && time.Since(info.ModTime()) > staleTemp {
			os.Remove(filepath.Join(d.tmp, e.Name()))
		}
	}
}

func (d *dirStore) String() string { return "file://" + d.root }

// path validates key and returns its file name.
func (d *dirStore) path(key string) (string, error) {
	if err := ValidateKey(key); err != nil {
		return "", err
	}
	if strings.HasPrefix(key, reservedPrefix) {
		return "", fmt.Errorf("%w: %q: keys starting with %q are reserved by the directory store", ErrInvalidKey, key, reservedPrefix)
	}
	return filepath.Join(d.root, filepath.FromSlash(key)), nil
}

// Put implements Store.
func (d *dirStore) Put(ctx context.Context, key string, r io.Reader, size int64, opts PutOptions) (ObjectInfo, error) {
	p, err := d.path(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	if opts.IfNoneMatch && opts.IfMatch != "" {
		return ObjectInfo{}, fmt.Errorf("put %s: IfNoneMatch and IfMatch together can never both hold", key)
	}
	tmp, etag, err := d.writeTemp(ctx, key, r, size)
	if err != nil {
		return ObjectInfo{}, err
	}
	defer os.Remove(tmp) // a no-op after a successful rename
	if err := ctx.Err(); err != nil {
		return ObjectInfo{}, fmt.Errorf("put %s: %w", key, err)
	}
	unlock, err := d.lock()
	if err != nil {
		return ObjectInfo{}, err
	}
	defer unlock()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return ObjectInfo{}, fmt.Errorf("put %s: %v (is a folder of this key an object?)", key, err)
	}
	switch {
	case opts.IfNoneMatch:
		// link fails if p exists, atomically: the create-only primitive.
		if err := os.Link(tmp, p); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return ObjectInfo{}, fmt.Errorf("put %s if none match: %w: the object exists", key, ErrPrecondition)
			}
			return ObjectInfo{}, fmt.Errorf("put %s: %v", key, err)
		}
	case opts.IfMatch != "":
		cur, err := d.stat(key, p)
		if errors.Is(err, ErrNotFound) {
			return ObjectInfo{}, fmt.Errorf("put %s if match %s: %w: no such object", key, opts.IfMatch, ErrPrecondition)
		}
		if err != nil {
			return ObjectInfo{}, err
		}
		if cur.ETag != strings.Trim(opts.IfMatch, `"`) {
			return ObjectInfo{}, fmt.Errorf("put %s if match %s: %w: current ETag is %s", key, opts.IfMatch, ErrPrecondition, cur.ETag)
		}
		fallthrough
	default:
		if err := os.Rename(tmp, p); err != nil {
			return ObjectInfo{}, fmt.Errorf("put %s: %v (is this key a folder of other objects?)", key, err)
		}
	}
	if err := syncDir(filepath.Dir(p)); err != nil {
		return ObjectInfo{}, fmt.Errorf("put %s: %v", key, err)
	}
	info, err := os.Stat(p)
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("put %s: %v", key, err)
	}
	return ObjectInfo{Key: key, Size: info.Size(), ETag: etag, LastModified: info.ModTime()}, nil
}

// writeTemp copies the body to a synced temp file and returns its name and
// ETag.
func (d *dirStore) writeTemp(ctx context.Context, key string, r io.Reader, size int64) (string, string, error) {
	f, err := os.CreateTemp(d.tmp, "put-*")
	if err != nil {
		return "", "", fmt.Errorf("put %s: %v", key, err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if size >= 0 {
		r = io.LimitReader(r, size)
	}
	h := md5.New()
	n, err := io.Copy(io.MultiWriter(f, h), ctxReader{ctx, r})
	if err != nil {
		return "", "", fmt.Errorf("put %s: reading body: %w", key, err)
	}
	if size >= 0 && n != size {
		return "", "", fmt.Errorf("put %s: body ended after %d of %d bytes", key, n, size)
	}
	etag := hex.EncodeToString(h.Sum(nil))
	_ = unix.Fsetxattr(int(f.Fd()), etagXattr, []byte(etag), 0) // a cache only
	if err := f.Sync(); err != nil {
		return "", "", fmt.Errorf("put %s: fsync: %v", key, err)
	}
	if err := f.Close(); err != nil {
		return "", "", fmt.Errorf("put %s: %v", key, err)
	}
	ok = true
	return f.Name(), etag, nil
}

// lock takes the commit lock, in this process and across processes.
func (d *dirStore) lock() (func(), error) {
	d.mu.Lock()
	f, err := os.OpenFile(filepath.Join(d.tmp, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err == nil {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		d.mu.Unlock()
		return nil, fmt.Errorf("store %s: commit lock: %v", d.root, err)
	}
	return func() { f.Close(); d.mu.Unlock() }, nil // closing releases the flock
}

// Get implements Store.
func (d *dirStore) Get(ctx context.Context, key string) (io.ReadCloser, ObjectInfo, error) {
	p, err := d.path(key)
	if err != nil {
		return nil, ObjectInfo{}, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, ObjectInfo{}, notFound(key, err)
	}
	info, err := objectInfo(key, f)
	if err != nil {
		f.Close()
		return nil, ObjectInfo{}, err
	}
	return f, info, nil
}

// Stat implements Store.
func (d *dirStore) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	p, err := d.path(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	return d.stat(key, p)
}

func (d *dirStore) stat(key, p string) (ObjectInfo, error) {
	f, err := os.Open(p)
	if err != nil {
		return ObjectInfo{}, notFound(key, err)
	}
	defer f.Close()
	return objectInfo(key, f)
}

// objectInfo describes the open object f, reading its ETag from the xattr
// cache or, failing that, from its content.
func objectInfo(key string, f *os.File) (ObjectInfo, error) {
	st, err := f.Stat()
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("stat %s: %v", key, err)
	}
	if !st.Mode().IsRegular() {
		return ObjectInfo{}, fmt.Errorf("%w: %s (a folder of other objects)", ErrNotFound, key)
	}
	info := ObjectInfo{Key: key, Size: st.Size(), LastModified: st.ModTime()}
	buf := make([]byte, 2*md5.Size)
	if n, err := unix.Fgetxattr(int(f.Fd()), etagXattr, buf); err == nil && n == len(buf) {
		info.ETag = string(buf)
		return info, nil
	}
	h := md5.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, st.Size())); err != nil {
		return ObjectInfo{}, fmt.Errorf("stat %s: computing ETag: %v", key, err)
	}
	info.ETag = hex.EncodeToString(h.Sum(nil))
	return info, nil
}

// Delete implements Store. It also removes folders the deletion left empty.
func (d *dirStore) Delete(ctx context.Context, key string) error {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	unlock, err := d.lock()
	if err != nil {
		return err
	}
	defer unlock()
	st, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || err == nil && st.IsDir() {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete %s: %v", key, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %v", key, err)
	}
	dir := filepath.Dir(p)
	for ; dir != d.root && strings.HasPrefix(dir, d.root); dir = filepath.Dir(dir) {
		if os.Remove(dir) != nil {
			break // not empty
		}
	}
	return syncDir(dir)
}

// List implements Store. It walks only the folders that can hold keys with
// the prefix and after the cursor, visiting siblings in key order (a folder
// "a" sorts as "a/"), so a page costs what it returns, not the store's size.
func (d *dirStore) List(ctx context.Context, prefix, cursor string, limit int) ([]ObjectInfo, string, error) {
	if err := validatePrefix(prefix); err != nil {
		return nil, "", err
	}
	if limit <= 0 {
		limit = DefaultListLimit
	}
	base := prefix[:strings.LastIndex(prefix, "/")+1]
	var out []ObjectInfo
	var walk func(dir, kp string) error
	walk = func(dir, kp string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		ents, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("list %s: %v", kp, err)
		}
		type node struct {
			sortKey string
			ent     fs.DirEntry
		}
		nodes := make([]node, 0, len(ents))
		for _, e := range ents {
			if kp == "" && strings.HasPrefix(e.Name(), reservedPrefix) {
				continue
			}
			sk := kp + e.Name()
			if e.IsDir() {
				sk += "/"
			}
			nodes = append(nodes, node{sk, e})
		}
		sort.Slice(nodes, func(i, j int) bool { return nodes[i].sortKey < nodes[j].sortKey })
		for _, n := range nodes {
			k := n.sortKey
			switch {
			case n.ent.IsDir():
				inPrefix := strings.HasPrefix(k, prefix) || strings.HasPrefix(prefix, k)
				pastCursor := cursor < k || strings.HasPrefix(cursor, k)
				if !inPrefix || !pastCursor {
					continue
				}
				if err := walk(filepath.Join(dir, n.ent.Name()), k); err != nil {
					return err
				}
			case n.ent.Type().IsRegular():
				if !strings.HasPrefix(k, prefix) || k <= cursor {
					continue
				}
				info, err := d.stat(k, filepath.Join(dir, n.ent.Name()))
				if errors.Is(err, ErrNotFound) {
					continue // deleted while we listed
				}
				if err != nil {
					return err
				}
				out = append(out, info)
			}
			if len(out) > limit {
				return nil
			}
		}
		return nil
	}
	if err := walk(filepath.Join(d.root, filepath.FromSlash(base)), base); err != nil {
		return nil, "", err
	}
	if len(out) > limit {
		out = out[:limit]
		return out, out[limit-1].Key, nil
	}
	return out, "", nil
}

func notFound(key string, err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	return fmt.Errorf("open %s: %v", key, err)
}

// syncDir fsyncs a directory so a rename or link in it survives a crash.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// ctxReader stops a copy when its context is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
