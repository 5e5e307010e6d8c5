// Package kineto is the daemon side of the protocol that PyTorch's profiler
// library (Kineto) speaks to a host daemon, so that loupe-agent is a drop-in
// replacement for Meta's dynolog: a PyTorch process started with
// KINETO_USE_DAEMON=1 polls the agent for on-demand trace configurations,
// and the agent can trace any such process at a chosen iteration or time
// without a code change.
//
// Two transports are served:
//
//   - IPC: Unix datagram sockets, by default in the abstract namespace under
//     the endpoint name "dynolog" (or socket files DIR/<name> when
//     KINETO_IPC_SOCKET_DIR=DIR is set on both sides). A message is one
//     datagram: an 8-byte little-endian payload size, a 32-byte NUL-padded
//     type string, then the payload. Kineto sends "req" (poll for a
//     configuration: i32 config type, i32 n, i64 job id, then n i32 pids,
//     its own pid first and then its ancestors) and is answered with a "req"
//     message whose payload is the configuration text, empty when there is
//     none. Older clients send "ctxt" (i32 gpu, i32 pid, i64 job id),
//     answered with one i32. Current Kineto never sends "ctxt": a process is
//     known from its first "req", and processes that stop polling for 60 s
//     are dropped.
//   - RPC: dynolog's JSON RPC on TCP (port 1778): one request per
//     connection, a native-endian i32 length then a JSON object with "fn"
//     (getStatus, getVersion, setKinetOnDemandRequest, dcgmProfPause,
//     dcgmProfResume), answered the same way, so the dyno CLI and scripts
//     written for dynolog work unchanged.
//
// Abstract socket names carry a trailing NUL as part of the name
// ("\x00dynolog\x00"); Go reads a sender's name back cut at its first NUL,
// so replies put it back.
package kineto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Message types Kineto sends.
const (
	typeRequest = "req"
	typeContext = "ctxt"
)

// Wire sizes of the IPC fabric message header (size_t size; char type[32]).
const (
	typeSize   = 32
	headerSize = 8 + typeSize
	// maxDatagram bounds a datagram we accept; real ones are well under 1 KiB.
	maxDatagram = 64 << 10
	// maxPIDs bounds a request's ancestor list.
	maxPIDs = 1024
)

// Kineto's configuration types (bit set), as in its LibkinetoConfigType.
const (
	ConfigEvents     = 0x1
	ConfigActivities = 0x2
)

// errMalformed marks a datagram that does not follow the protocol.
var errMalformed = errors.New("malformed kineto IPC datagram")

// message is one decoded datagram.
type message struct {
	Type    string
	Payload []byte
}

// decodeMessage parses a datagram.
func decodeMessage(b []byte) (message, error) {
	if len(b) < headerSize {
		return message{}, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", errMalformed, len(b), headerSize)
	}
	size := binary.LittleEndian.Uint64(b[:8])
	if size != uint64(len(b)-headerSize) {
		return message{}, fmt.Errorf("%w: header says %d payload bytes, datagram carries %d", errMalformed, size, len(b)-headerSize)
	}
	typ := b[8:headerSize]
	if i := bytes.IndexByte(typ, 0); i >= 0 {
		typ = typ[:i]
	}
	return message{Type: string(typ), Payload: b[headerSize:]}, nil
}

// encodeMessage builds a datagram.
func encodeMessage(typ string, payload []byte) []byte {
	b := make([]byte, headerSize+len(payload))
	binary.LittleEndian.PutUint64(b[:8], uint64(len(payload)))
	copy(b[8:8+typeSize-1], typ)
	copy(b[headerSize:], payload)
	return b
}

// pollRequest is the payload of a "req" message.
type pollRequest struct {
	ConfigType int32
	JobID      int64
	// PIDs is the requesting process first, then its ancestors.
	PIDs []int32
}

func decodePollRequest(p []byte) (pollRequest, error) {
	if len(p) < 16 {
		return pollRequest{}, fmt.Errorf("%w: req payload of %d bytes, want at least 16", errMalformed, len(p))
	}
	r := pollRequest{
		ConfigType: int32(binary.LittleEndian.Uint32(p[0:4])),
		JobID:      int64(binary.LittleEndian.Uint64(p[8:16])),
	}
	n := int32(binary.LittleEndian.Uint32(p[4:8]))
	if n <= 0 || n > maxPIDs {
		return pollRequest{}, fmt.Errorf("%w: req lists %d pids, want 1 to %d", errMalformed, n, maxPIDs)
	}
	if len(p) != 16+4*int(n) {
		return pollRequest{}, fmt.Errorf("%w: req says %d pids but carries %d bytes of them", errMalformed, n, len(p)-16)
	}
	r.PIDs = make([]int32, n)
	for i := range r.PIDs {
		r.PIDs[i] = int32(binary.LittleEndian.Uint32(p[16+4*i:]))
		if r.PIDs[i] <= 0 {
			return pollRequest{}, fmt.Errorf("%w: req pid %d is not positive", errMalformed, r.PIDs[i])
		}
	}
	return r, nil
}

// contextRequest is the payload of a "ctxt" message.
type contextRequest struct {
	GPU   int32
	PID   int32
	JobID int64
}

func decodeContext(p []byte) (contextRequest, error) {
	if len(p) != 16 {
		return contextRequest{}, fmt.Errorf("%w: ctxt payload of %d bytes, want 16", errMalformed, len(p))
	}
	c := contextRequest{
		GPU:   int32(binary.LittleEndian.Uint32(p[0:4])),
		PID:   int32(binary.LittleEndian.Uint32(p[4:8])),
		JobID: int64(binary.LittleEndian.Uint64(p[8:16])),
	}
	if c.PID <= 0 {
		return contextRequest{}, fmt.Errorf("%w: ctxt pid %d is not positive", errMalformed, c.PID)
	}
	return c, nil
}

// socketName is the Go address of an endpoint: "@name\x00" in the abstract
// namespace (the trailing NUL is part of the name, as Kineto binds it), or
// DIR/name when a socket directory is used.
func socketName(name, dir string) string {
	if dir != "" {
		return strings.TrimRight(dir, "/") + "/" + name
	}
	return "@" + name + "\x00"
}

// replyAddress restores the trailing NUL that Go drops from an abstract
// sender name.
func replyAddress(from string) string {
	if strings.HasPrefix(from, "@") && !strings.HasSuffix(from, "\x00") {
		return from + "\x00"
	}
	return from
}
