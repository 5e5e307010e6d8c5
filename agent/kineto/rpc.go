package kineto

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// maxRPCFrame bounds one RPC request; dyno's are a few hundred bytes.
const maxRPCFrame = 1 << 20

// rpcTimeout bounds one connection, so a stalled client cannot hold a slot.
const rpcTimeout = 10 * time.Second

func (s *Server) serveRPC(ctx context.Context) {
	if s.rpc == nil {
		return
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	var pauseMu sync.Mutex
	var resumeTimer *time.Timer
	resumeAfter := func(d time.Duration) {
		pauseMu.Lock()
		defer pauseMu.Unlock()
		if resumeTimer != nil {
			resumeTimer.Stop()
			resumeTimer = nil
		}
		if d > 0 {
			resumeTimer = time.AfterFunc(d, func() {
				if err := s.dcgm.PauseProfiling(false); err != nil {
					s.log.Warn("resuming DCGM profiling after the pause failed", "err", err)
				}
			})
		}
	}
	defer resumeAfter(0)
	for {
		conn, err := s.rpc.Accept()
		if err != nil {
			select {
			case <-s.closed:
				return
			default:
			}
			s.log.Warn("dynolog RPC accept failed", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(rpcTimeout))
			req, err := readFrame(conn)
			if err != nil {
				s.rpcRejected(rejectReason(err)).Inc()
				s.log.Debug("dropped dynolog RPC request", "remote", conn.RemoteAddr(), "err", err)
				return
			}
			resp, err := s.handleRPC(req, resumeAfter)
			if err != nil {
				s.rpcRejected(rejectReason(err)).Inc()
				s.log.Debug("dropped dynolog RPC request", "remote", conn.RemoteAddr(), "err", err)
				return // dynolog closes without an answer, too
			}
			writeFrame(conn, resp)
		}()
	}
}

var (
	errFrameSize  = errors.New("RPC frame size out of range")
	errBadRequest = errors.New("RPC request is not a JSON object with a string \"fn\"")
	errUnknownFn  = errors.New("unknown RPC function")
)

func rejectReason(err error) string {
	switch {
	case errors.Is(err, errFrameSize):
		return "frame_size"
	case errors.Is(err, errUnknownFn):
		return "unknown_fn"
	case errors.Is(err, errBadRequest):
		return "bad_request"
	default:
		return "io"
	}
}

// readFrame reads one length-prefixed frame (native-endian i32, which is
// little-endian on every platform the agent runs on).
func readFrame(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int32(binary.LittleEndian.Uint32(hdr[:]))
	if n <= 0 || n > maxRPCFrame {
		return nil, fmt.Errorf("%w: %d bytes, want 1 to %d", errFrameSize, n, maxRPCFrame)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

func writeFrame(w io.Writer, b []byte) error {
	var hdr [4]byte
	binary.LittleEndian.PutUint32(hdr[:], uint32(len(b)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

// rpcRequest holds the fields any dynolog RPC may carry.
type rpcRequest struct {
	Fn           string  `json:"fn"`
	Config       *string `json:"config"`
	PIDs         *[]int  `json:"pids"`
	JobID        int64   `json:"job_id"`
	ProcessLimit *int    `json:"process_limit"`
	DurationS    *int    `json:"duration_s"`
}

// handleRPC answers one request as dynolog's SimpleJsonServer does.
func (s *Server) handleRPC(b []byte, resumeAfter func(time.Duration)) ([]byte, error) {
	var req rpcRequest
	if err := json.Unmarshal(b, &req); err != nil || req.Fn == "" {
		return nil, fmt.Errorf("%w: %v", errBadRequest, err)
	}
	s.rpcRequests(req.Fn).Inc()
	var resp any
	switch req.Fn {
	case "getStatus":
		resp = map[string]int{"status": 1}
	case "getVersion":
		resp = map[string]string{"version": Version}
	case "setKinetOnDemandRequest":
		if req.Config == nil || req.PIDs == nil {
			resp = map[string]string{"status": "failed"}
			break
		}
		limit := 1000
		if req.ProcessLimit != nil {
			limit = *req.ProcessLimit
		}
		res := s.reg.setOnDemand(strconv.FormatInt(req.JobID, 10), *req.PIDs, *req.Config, ConfigActivities, limit)
		s.triggered.Add(len(res.ActivityProfilersTriggered))
		s.log.Info("dyno gputrace request", "job_id", req.JobID, "pids", *req.PIDs, "matched", res.ProcessesMatched)
		resp = res
	case "dcgmProfPause":
		if req.DurationS == nil {
			resp = map[string]string{"status": "failed"}
			break
		}
		ok := s.dcgm != nil && s.dcgm.PauseProfiling(true) == nil
		if ok {
			resumeAfter(time.Duration(*req.DurationS) * time.Second)
		}
		resp = map[string]bool{"status": ok}
	case "dcgmProfResume":
		ok := s.dcgm != nil && s.dcgm.PauseProfiling(false) == nil
		if ok {
			resumeAfter(0)
		}
		resp = map[string]bool{"status": ok}
	default:
		return nil, fmt.Errorf("%w %q", errUnknownFn, req.Fn)
	}
	return json.Marshal(resp)
}

// Call sends one dynolog RPC to addr and returns the raw JSON answer; it is
// what the dyno CLI does, for tests and scripts.
func Call(ctx context.Context, addr string, request any) ([]byte, error) {
	body, err := json.Marshal(request)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if err := writeFrame(conn, body); err != nil {
		return nil, err
	}
	return readFrame(conn)
}
