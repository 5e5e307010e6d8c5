package kineto

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Config configures the Kineto daemon endpoint.
type Config struct {
	Enabled bool `yaml:"enabled"`
	// Endpoint is the IPC endpoint name Kineto sends to ("dynolog").
	Endpoint string `yaml:"endpoint"`
	// SocketDir, when set, uses socket files DIR/<name> instead of the
	// abstract namespace; it must match the jobs' KINETO_IPC_SOCKET_DIR.
	// Defaults to the agent's own KINETO_IPC_SOCKET_DIR.
	SocketDir string `yaml:"socket_dir"`
	// RPCAddr is where dynolog's JSON RPC is served ("" disables it).
	// dynolog listens on every interface with no authentication; Loupe
	// defaults to loopback, which is where the dyno CLI connects.
	RPCAddr string `yaml:"rpc_addr"`
	// KeepAlive drops processes that have not polled for this long.
	KeepAlive time.Duration `yaml:"keepalive"`
	// TraceDir is where traces requested by Loupe's own captures are written.
	// The traced processes must see the same path (mount it into containers).
	TraceDir string `yaml:"trace_dir"`
	// JobOf attributes a pid to a Loupe job name (nil: Kineto job ids only).
	JobOf func(pid int) string `yaml:"-"`
}

// DefaultConfig returns the defaults: abstract endpoint "dynolog", RPC on
// 127.0.0.1:1778, 60 s keep-alive.
func DefaultConfig() Config {
	return Config{
		Enabled: true, Endpoint: "dynolog", SocketDir: os.Getenv("KINETO_IPC_SOCKET_DIR"),
		RPCAddr: "127.0.0.1:1778", KeepAlive: 60 * time.Second, TraceDir: "/tmp/loupe-kineto",
	}
}

// DCGMControl pauses and resumes DCGM profiling for dynolog's dcgmProfPause
// and dcgmProfResume RPCs.
type DCGMControl interface {
	PauseProfiling(pause bool) error
}

// Version is what getVersion answers.
var Version = "loupe-agent (dynolog-compatible)"

// Server serves the Kineto IPC endpoint and the dynolog RPC.
type Server struct {
	cfg  Config
	log  *slog.Logger
	reg  *registry
	dcgm DCGMControl

	ipc    *net.UnixConn
	rpc    net.Listener
	closed chan struct{}

	ipcMessages    func(typ string) *metrics.Counter
	ipcMalformed   *metrics.Counter
	ipcReplyErrors *metrics.Counter
	rpcRequests    func(fn string) *metrics.Counter
	rpcRejected    func(reason string) *metrics.Counter
	triggered      *metrics.Counter
}

// New binds the IPC endpoint and the RPC listener. dcgm may be nil, then the
// DCGM RPCs answer false.
func New(cfg Config, logger *slog.Logger, set *metrics.Set, dcgm DCGMControl) (*Server, error) {
	if logger == nil {
		logger = slog.Default()
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = 60 * time.Second
	}
	s := &Server{cfg: cfg, log: logger.With("component", "kineto"), reg: newRegistry(cfg.JobOf), dcgm: dcgm, closed: make(chan struct{})}
	s.initMetrics(set)

	addr := socketName(cfg.Endpoint, cfg.SocketDir)
	if cfg.SocketDir != "" {
		os.Remove(addr) // a stale socket file from a previous run
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("kineto IPC endpoint %q is taken: is dynolog (or another loupe-agent) running? Stop it or disable kineto in loupe-agent: %w", cfg.Endpoint, err)
		}
		return nil, fmt.Errorf("kineto IPC endpoint %q: %w", addr, err)
	}
	if cfg.SocketDir != "" {
		os.Chmod(addr, 0o666) // processes of any user poll it, as with dynolog
	}
	s.ipc = conn
	if cfg.RPCAddr != "" {
		l, err := net.Listen("tcp", cfg.RPCAddr)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("dynolog RPC on %s: %w (is dynolog running?)", cfg.RPCAddr, err)
		}
		s.rpc = l
	}
	return s, nil
}

// initMetrics registers the server's metrics in set.
func (s *Server) initMetrics(set *metrics.Set) {
	s.ipcMessages = func(typ string) *metrics.Counter {
		return set.GetOrCreateCounter(fmt.Sprintf(`loupe_kineto_ipc_messages_total{type=%q}`, typ))
	}
	s.ipcMalformed = set.GetOrCreateCounter("loupe_kineto_ipc_malformed_total")
	s.ipcReplyErrors = set.GetOrCreateCounter("loupe_kineto_ipc_reply_errors_total")
	s.rpcRequests = func(fn string) *metrics.Counter {
		return set.GetOrCreateCounter(fmt.Sprintf(`loupe_kineto_rpc_requests_total{fn=%q}`, fn))
	}
	s.rpcRejected = func(reason string) *metrics.Counter {
		return set.GetOrCreateCounter(fmt.Sprintf(`loupe_kineto_rpc_rejected_total{reason=%q}`, reason))
	}
	s.triggered = set.GetOrCreateCounter("loupe_kineto_traces_triggered_total")
	set.GetOrCreateGauge("loupe_kineto_processes", func() float64 { return float64(len(s.reg.list())) })

}

// RPCAddr is the address the RPC listens on ("" when disabled).
func (s *Server) RPCAddr() string {
	if s.rpc == nil {
		return ""
	}
	return s.rpc.Addr().String()
}

// Run serves until ctx is done, then closes both endpoints.
func (s *Server) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.serveIPC() }()
	go func() { defer wg.Done(); s.serveRPC(ctx) }()
	tick := time.NewTicker(s.cfg.KeepAlive / 4)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case now := <-tick.C:
			for _, p := range s.reg.gc(now, s.cfg.KeepAlive) {
				s.log.Info("stopped tracking kineto process: no poll within keep-alive", "pid", p.PID, "job_id", p.JobID, "keepalive", s.cfg.KeepAlive)
			}
		}
	}
	close(s.closed)
	s.ipc.Close()
	if s.rpc != nil {
		s.rpc.Close()
	}
	wg.Wait()
	if s.cfg.SocketDir != "" {
		os.Remove(socketName(s.cfg.Endpoint, s.cfg.SocketDir))
	}
	return nil
}

func (s *Server) serveIPC() {
	buf := make([]byte, maxDatagram)
	for {
		n, _, flags, from, err := s.ipc.ReadMsgUnix(buf, nil)
		if err != nil {
			select {
			case <-s.closed:
				return
			default:
			}
			s.log.Warn("kineto IPC receive failed", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if flags&syscall.MSG_TRUNC != 0 {
			s.ipcMalformed.Inc()
			continue
		}
		reply, err := s.handleDatagram(buf[:n], time.Now())
		if err != nil {
			s.ipcMalformed.Inc()
			s.log.Debug("dropped kineto datagram", "err", err)
			continue
		}
		if from == nil || from.Name == "" {
			continue // an unbound sender cannot be answered
		}
		to := &net.UnixAddr{Name: replyAddress(from.Name), Net: "unixgram"}
		if _, err := s.ipc.WriteToUnix(reply, to); err != nil {
			s.ipcReplyErrors.Inc()
			s.log.Debug("kineto IPC reply failed", "to", to.Name, "err", err)
		}
	}
}

// handleDatagram processes one datagram and returns the reply to send.
func (s *Server) handleDatagram(b []byte, now time.Time) ([]byte, error) {
	msg, err := decodeMessage(b)
	if err != nil {
		return nil, err
	}
	switch msg.Type {
	case typeRequest:
		req, err := decodePollRequest(msg.Payload)
		if err != nil {
			return nil, err
		}
		s.ipcMessages(typeRequest).Inc()
		return encodeMessage(typeRequest, []byte(s.reg.poll(req, now))), nil
	case typeContext:
		c, err := decodeContext(msg.Payload)
		if err != nil {
			return nil, err
		}
		s.ipcMessages(typeContext).Inc()
		var out [4]byte
		n := s.reg.register(c, now)
		out[0], out[1], out[2], out[3] = byte(n), byte(n>>8), byte(n>>16), byte(n>>24)
		return encodeMessage(typeContext, out[:]), nil
	default:
		return nil, fmt.Errorf("%w: unknown type %q", errMalformed, msg.Type)
	}
}

// Processes lists the Kineto processes that have polled recently.
func (s *Server) Processes() []Process { return s.reg.list() }

// Trace installs a trace request for the matching processes; they pick it up
// on their next poll. A process that matched but is still busy with an
// earlier request is counted as busy, not triggered.
func (s *Server) Trace(req TraceRequest) (Result, error) {
	if err := req.Validate(); err != nil {
		return Result{}, err
	}
	if req.Limit <= 0 {
		req.Limit = 1000
	}
	if err := os.MkdirAll(filepath.Dir(req.LogFile), 0o777); err != nil {
		return Result{}, fmt.Errorf("kineto trace folder: %w", err)
	}
	res := s.reg.setOnDemand(req.Job, req.PIDs, req.Config(), ConfigActivities, req.Limit)
	s.triggered.Add(len(res.ActivityProfilersTriggered))
	s.log.Info("kineto trace requested", "job", req.Job, "pids", req.PIDs,
		"matched", res.ProcessesMatched, "triggered", res.ActivityProfilersTriggered, "busy", res.ActivityProfilersBusy)
	return res, nil
}
