package store

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalidKey reports an object key or list prefix that no store accepts.
var ErrInvalidKey = errors.New("invalid object key")

// MaxKeyLen is S3's limit on the length of an object key.
const MaxKeyLen = 1024

// ValidateKey checks an object key before any store sees it: 1 to 1024
// bytes of slash-separated, non-empty components, none of them "." or "..",
// no leading or trailing slash, no backslash and no control characters. Both
// implementations enforce it, so a key that works on a local directory also
// works on S3 and cannot escape the directory store's root.
func ValidateKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("%w: key of %d bytes is longer than %d", ErrInvalidKey, len(key), MaxKeyLen)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x20 || c == 0x7f || c == '\\' {
			return fmt.Errorf("%w: %q has byte %#x; keys may not hold control characters or backslashes", ErrInvalidKey, key, c)
		}
	}
	for _, c := range strings.Split(key, "/") {
		switch c {
		case "":
			return fmt.Errorf("%w: %q has an empty component (leading, trailing or double slash)", ErrInvalidKey, key)
		case ".", "..":
			return fmt.Errorf("%w: %q has a %q component", ErrInvalidKey, key, c)
		}
	}
	return nil
}

// validatePrefix checks a List prefix: empty, or a key prefix that may end in
// a slash.
func validatePrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if err := ValidateKey(strings.TrimSuffix(prefix, "/")); err != nil {
		return fmt.Errorf("list prefix: %w", err)
	}
	return nil
}
