package traces

import (
	"errors"
	"fmt"
	"strings"
)

// KeyVersion is the first component of every object key Loupe writes.
const KeyVersion = "v1"

// ErrBadKey reports an object key or key component that is not valid.
var ErrBadKey = errors.New("invalid object key")

// maxComponent bounds one key component, well under S3's 1024-byte key limit
// for six components plus a part name.
const maxComponent = 128

// Key locates one host's share of one capture in the store:
// v1/<cluster>/<job>/<run>/<capture>/<host>/.
type Key struct {
	Cluster, Job, Run, Capture, Host string
}

// Validate checks every component of k.
func (k Key) Validate() error {
	for _, c := range []struct{ name, v string }{
		{"cluster", k.Cluster}, {"job", k.Job}, {"run", k.Run},
		{"capture", k.Capture}, {"host", k.Host},
	} {
		if err := ValidateComponent(c.v); err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
	}
	return nil
}

// JobPrefix is the prefix of every capture of the job run: v1/<cluster>/<job>/<run>/.
func (k Key) JobPrefix() string {
	return KeyVersion + "/" + k.Cluster + "/" + k.Job + "/" + k.Run + "/"
}

// CapturePrefix is the prefix of every host of the capture: .../<capture>/.
func (k Key) CapturePrefix() string { return k.JobPrefix() + k.Capture + "/" }

// Prefix is the host folder of the capture: .../<capture>/<host>/.
func (k Key) Prefix() string { return k.CapturePrefix() + k.Host + "/" }

// Object is the key of a part or of the manifest inside the host folder.
func (k Key) Object(name string) string { return k.Prefix() + name }

// KeyOf returns the key of the host folder that m describes.
func KeyOf(m *Manifest) Key {
	return Key{Cluster: m.Cluster, Job: m.Job, Run: m.Run, Capture: m.CaptureID, Host: m.Host}
}

// ParseKey splits an object key into its host folder and the name inside it.
// It accepts both a folder ("v1/c/j/r/cap/h/") and an object inside one.
func ParseKey(s string) (Key, string, error) {
	parts := strings.SplitN(s, "/", 7)
	if len(parts) < 6 || parts[0] != KeyVersion {
		return Key{}, "", fmt.Errorf("%w: %q is not of the form %s/<cluster>/<job>/<run>/<capture>/<host>/...", ErrBadKey, s, KeyVersion)
	}
	k := Key{Cluster: parts[1], Job: parts[2], Run: parts[3], Capture: parts[4], Host: parts[5]}
	if err := k.Validate(); err != nil {
		return Key{}, "", fmt.Errorf("%w: %q: %v", ErrBadKey, s, err)
	}
	name := ""
	if len(parts) == 7 {
		name = parts[6]
		if name != "" {
			if err := ValidatePartName(name); err != nil {
				return Key{}, "", fmt.Errorf("%w: %q: %v", ErrBadKey, s, err)
			}
		}
	}
	return k, name, nil
}

// ValidateComponent checks one key component: 1 to 128 characters from
// [A-Za-z0-9._-], starting with a letter or digit (so never "." or "..").
func ValidateComponent(c string) error {
	if c == "" {
		return fmt.Errorf("%w: empty component", ErrBadKey)
	}
	if len(c) > maxComponent {
		return fmt.Errorf("%w: component of %d bytes is longer than %d", ErrBadKey, len(c), maxComponent)
	}
	if !isAlnum(c[0]) {
		return fmt.Errorf("%w: component %q must start with a letter or digit", ErrBadKey, c)
	}
	for i := 0; i < len(c); i++ {
		if b := c[i]; !isAlnum(b) && b != '.' && b != '_' && b != '-' {
			return fmt.Errorf("%w: component %q has character %q; use only A-Z a-z 0-9 . _ -", ErrBadKey, c, b)
		}
	}
	return nil
}

// ValidatePartName checks a part name: a relative slash-separated path of
// valid components that cannot escape the host folder.
func ValidatePartName(name string) error {
	if name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, `\`) {
		return fmt.Errorf("%w: %q", ErrUnsafeName, name)
	}
	for _, c := range strings.Split(name, "/") {
		if err := ValidateComponent(c); err != nil {
			return fmt.Errorf("%w: %q: %v", ErrUnsafeName, name, err)
		}
	}
	return nil
}

func isAlnum(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9'
}
