package logparse

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"time"
)

// record is one line as the program printed it, or part of one.
type record struct {
	text    string
	time    time.Time // zero when the wrapper carried none
	stream  string    // stdout or stderr; "" for plain files
	partial bool      // more of the same line follows
	// From a journald or syslog wrapper.
	host, unit string
	pid        int
}

// unwrap decodes a container runtime's or journald's wrapper around line.
func unwrap(line []byte, ref time.Time, loc *time.Location) record {
	if len(line) > 0 && line[0] == '{' && bytes.Contains(line, []byte(`"__REALTIME_TIMESTAMP"`)) {
		if r, ok := journalJSON(line); ok {
			return r
		}
	}
	if len(line) > 0 && line[0] == '{' && bytes.Contains(line, []byte(`"log"`)) {
		var d struct {
			Log    *string `json:"log"`
			Stream string  `json:"stream"`
			Time   string  `json:"time"`
		}
		if json.Unmarshal(line, &d) == nil && d.Log != nil {
			t, _ := time.Parse(time.RFC3339Nano, d.Time)
			text, partial := strings.CutSuffix(*d.Log, "\n")
			return record{text: strings.TrimSuffix(text, "\r"), time: t, stream: d.Stream, partial: !partial}
		}
	}
	// CRI: "<RFC3339Nano> <stream> <P|F> <text>"; the text may be empty.
	if sp := bytes.IndexByte(line, ' '); sp >= 20 && sp <= 40 && isDigit(line[0]) {
		rest := line[sp+1:]
		for _, stream := range []string{"stdout ", "stderr "} {
			if len(rest) >= len(stream)+1 && string(rest[:len(stream)]) == stream {
				tag := rest[len(stream)]
				if tag != 'P' && tag != 'F' || len(rest) > len(stream)+1 && rest[len(stream)+1] != ' ' {
					break
				}
				t, err := time.Parse(time.RFC3339Nano, string(line[:sp]))
				if err != nil {
					break
				}
				text := ""
				if len(rest) > len(stream)+2 {
					text = string(rest[len(stream)+2:])
				}
				return record{text: text, time: t, stream: stream[:6], partial: tag == 'P'}
			}
		}
	}
	return syslogLine(string(line), ref, loc)
}

func isDigit(b byte) bool { return b >= '0' && b <= '9' }

// Source says which pod and container a log file belongs to, from the
// paths the kubelet and container runtimes use:
//
//	/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log
//	/var/log/containers/<pod>_<namespace>_<container>-<id>.log
type Source struct {
	Namespace, Pod, Container string
}

// SourceOf reads the pod and container from a log file's path; the zero
// Source when the path is not a kubelet log path.
func SourceOf(path string) Source {
	path = filepath.ToSlash(path)
	if i := strings.Index(path, "/log/pods/"); i >= 0 {
		parts := strings.Split(path[i+len("/log/pods/"):], "/")
		if len(parts) >= 3 {
			f := strings.Split(parts[0], "_")
			if len(f) == 3 {
				return Source{Namespace: f[0], Pod: f[1], Container: parts[1]}
			}
		}
	}
	if i := strings.Index(path, "/log/containers/"); i >= 0 {
		base := strings.TrimSuffix(path[i+len("/log/containers/"):], ".log")
		f := strings.Split(base, "_")
		if len(f) == 3 {
			container := f[2]
			if j := strings.LastIndexByte(container, '-'); j > 0 {
				container = container[:j]
			}
			return Source{Namespace: f[1], Pod: f[0], Container: container}
		}
	}
	return Source{}
}
