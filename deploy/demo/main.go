// Command demo is `make demo`: Loupe end to end on one machine with no GPU.
//
// It builds loupe-agent, loupe-aggregator, a stand-in libnccl and a
// synthetic 8-rank training job into .cache/demo, then starts
//
//   - MinIO from .cache/bin/minio (`make minio`) with an S3 event webhook to
//     the aggregator, or a local-directory store when there is no MinIO;
//   - loupe-aggregator, with an alert webhook to the demo's own receiver;
//   - loupe-agent with --simulate-gpus 8, one of them thermal-throttling;
//   - the job: 8 processes (RANK, LOCAL_RANK, WORLD_SIZE, SLURM_JOB_ID)
//     calling the stand-in libnccl every iteration and posting step markers,
//     with a straggler rank and a rank stalled in its data loader;
//   - a webhook receiver that checks each alert's signature and prints it,
//
// prints the URLs and each finding as the aggregator publishes it, and on
// Ctrl-C stops every process it started and exits 0. Everything is
// simulated and says so.
//
// As root the agent's eBPF collectors run for real: uprobes on the stand-in
// libnccl see every collective, and the CPU profiler samples the ranks.
// Without root there is no eBPF: the ranks' step markers give the
// iterations, an on-demand capture is asked for with `loupe-agent capture`,
// the straggler shows in step times and the data-loader stall cannot be
// told apart (it needs the CPU profile). The demo says which path ran.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/notification"
	"go.yaml.in/yaml/v3"

	agentapi "github.com/loupe-dev/loupe/agent/api"
	"github.com/loupe-dev/loupe/aggregator"
	"github.com/loupe-dev/loupe/aggregator/alerts"
	"github.com/loupe-dev/loupe/traces"
)

// options are the demo's flags.
type options struct {
	dir                                 string
	addr, agentAPI, agentMetrics        string
	receiverAddr, minioAddr, consoleAdr string
	store                               string // auto, minio or dir
	ebpfMode                            string // auto, on or off
	ebpf                                bool
	ranks                               int
	computeTime, stragglerDelay         time.Duration
	stragglerRank, loaderRank           int
	throttledGPU                        int
	triggerAt, captureIterations        int
	job                                 string
	findingsTimeout                     time.Duration
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.dir, "dir", "", "work `folder` for builds, stores, logs (default <repo>/.cache/demo)")
	fs.StringVar(&o.addr, "addr", "127.0.0.1:8080", "aggregator address (dashboard, API, S3 webhook)")
	fs.StringVar(&o.agentAPI, "agent-api", "127.0.0.1:9401", "agent API address")
	fs.StringVar(&o.agentMetrics, "agent-metrics", "127.0.0.1:9400", "agent /metrics address")
	fs.StringVar(&o.receiverAddr, "receiver", "127.0.0.1:9099", "alert webhook receiver address")
	fs.StringVar(&o.minioAddr, "minio", "127.0.0.1:9000", "MinIO S3 API address")
	fs.StringVar(&o.consoleAdr, "minio-console", "127.0.0.1:9001", "MinIO console address")
	fs.StringVar(&o.store, "store", "auto", "auto (MinIO when .cache/bin/minio exists), minio, or dir (a local folder)")
	fs.StringVar(&o.ebpfMode, "ebpf", "auto", "auto (when root), on, or off: the agent's eBPF NCCL tracer and CPU profiler")
	fs.IntVar(&o.ranks, "ranks", 8, "ranks of the job, one simulated GPU each")
	fs.DurationVar(&o.computeTime, "compute", 40*time.Millisecond, "forward and backward time of one iteration")
	fs.IntVar(&o.stragglerRank, "straggler", 3, "the straggler rank")
	fs.DurationVar(&o.stragglerDelay, "straggler-delay", 15*time.Millisecond, "the straggler's extra time per iteration")
	fs.IntVar(&o.loaderRank, "loader", 6, "the rank stalled in its data loader")
	fs.IntVar(&o.throttledGPU, "throttled-gpu", 5, "the thermal-throttling simulated GPU")
	fs.IntVar(&o.triggerAt, "trigger-at", 30, "iteration from which the agent may capture")
	fs.IntVar(&o.captureIterations, "capture-iterations", 40, "iterations a capture covers")
	fs.StringVar(&o.job, "job", "llm-pretrain-demo", "the job's name (its SLURM_JOB_ID)")
	fs.DurationVar(&o.findingsTimeout, "findings-timeout", 2*time.Minute, "warn when the planted problems are not all found by then")
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: make demo [DEMO_FLAGS='--flag value ...']   or   .cache/demo/loupe-demo [flags]\n\n"+
			"Runs Loupe end to end on simulated GPUs with planted problems; Ctrl-C stops everything.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if err := traces.ValidateComponent(o.job); err != nil {
		return o, fmt.Errorf("--job: %w", err)
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch o.ebpfMode {
	case "auto":
		o.ebpf = os.Geteuid() == 0
	case "on", "off":
		o.ebpf = o.ebpfMode == "on"
	default:
		return o, fmt.Errorf("--ebpf %q: want auto, on or off", o.ebpfMode)
	}
	if o.store != "auto" && o.store != "minio" && o.store != "dir" {
		return o, fmt.Errorf("--store %q: want auto, minio or dir", o.store)
	}
	for _, r := range []struct {
		name string
		v    int
	}{{"--straggler", o.stragglerRank}, {"--loader", o.loaderRank}, {"--throttled-gpu", o.throttledGPU}} {
		if r.v < 0 || r.v >= o.ranks {
			return o, fmt.Errorf("%s %d: want 0..%d (--ranks %d)", r.name, r.v, o.ranks-1, o.ranks)
		}
	}
	if o.ranks < 2 || o.ranks > 64 {
		return o, fmt.Errorf("--ranks %d: want 2..64", o.ranks)
	}
	return o, nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err == nil {
		err = run(ctx, o, os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// demo is one run: its options, folders and processes.
type demo struct {
	o       options
	out     io.Writer
	start   time.Time
	root    string
	runDir  string
	bins    binaries
	procs   *children
	outMu   sync.Mutex
	minio   bool
	storeTo string // the store URL agent and aggregator share
}

// say prints one line, stamped with the time since the demo started.
func (d *demo) say(format string, args ...any) {
	d.outMu.Lock()
	defer d.outMu.Unlock()
	fmt.Fprintf(d.out, "[%5.1fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

func run(ctx context.Context, o options, out io.Writer) error {
	d := &demo{o: o, out: out, start: time.Now()}
	var err error
	if d.root, err = repoRoot(); err != nil {
		return err
	}
	if o.dir == "" {
		o.dir = filepath.Join(d.root, ".cache", "demo")
	}
	if o.dir, err = filepath.Abs(o.dir); err != nil {
		return err
	}
	d.o = o
	d.runDir = filepath.Join(o.dir, "run")
	// Each run starts from empty stores, so old findings do not show.
	if err := os.RemoveAll(d.runDir); err != nil {
		return err
	}
	for _, sub := range []string{"logs", "job", "spool"} {
		if err := os.MkdirAll(filepath.Join(d.runDir, sub), 0o755); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "Loupe demo. Everything here is SIMULATED: %d simulated H100 GPUs (go-nvml's mock DGX H100, every sample labelled simulated)\n"+
		"and a synthetic %d-rank C training job calling a stand-in libnccl. No GPU is used; the problems below are planted.\n\n", o.ranks, o.ranks)

	d.say("building loupe-agent, loupe-aggregator (go build), the stand-in libnccl and the job (gcc) into %s", o.dir)
	if d.bins, err = build(ctx, d.root, o.dir); err != nil {
		return err
	}
	d.procs = newChildren(filepath.Join(d.runDir, "logs"))
	err = d.up(ctx)
	d.shutdown()
	if err != nil && ctx.Err() != nil {
		return nil // Ctrl-C during start-up
	}
	return err
}

// up starts everything and waits for Ctrl-C or a process that dies.
func (d *demo) up(ctx context.Context) error {
	o := d.o
	secret := randHex(16)
	rc := &receiver{secret: []byte(secret), print: d.say}
	recvURL, stopRecv, err := d.serveReceiver(rc)
	if err != nil {
		return err
	}
	defer stopRecv()

	token := randHex(12)
	if err := d.startStore(ctx, token); err != nil {
		return err
	}
	alertsOn, err := d.startAggregator(ctx, token, recvURL, secret)
	if err != nil {
		return err
	}
	if d.minio {
		if err := d.notifyAggregator(ctx); err != nil {
			return err
		}
	}
	pids, err := d.startJob()
	if err != nil {
		return err
	}
	// The hard case: the ranks create their communicator and train before
	// the agent starts, as when it is upgraded or restarted under a running
	// job. The agent still names ranks by RANK and matches their
	// collectives across ranks by pattern.
	if err := os.WriteFile(filepath.Join(d.runDir, "job", "go"), nil, 0o644); err != nil {
		return err
	}
	time.Sleep(time.Second)
	if err := d.startAgent(ctx, pids); err != nil {
		return err
	}
	problems := plantedProblems(o)
	d.printPlan(problems, recvURL, alertsOn)

	w := newWatcher("http://"+o.addr, o.job, problems, d.say)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	found := make(chan struct{})
	wg.Go(func() {
		w.run(wctx, 500*time.Millisecond, func() { close(found) })
	})
	if !o.ebpf {
		wg.Go(func() { d.captureOnDemand(wctx) })
	}
	wg.Go(func() { d.followCaptures(wctx) })

	timeout := time.After(o.findingsTimeout)
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(d.out)
			d.say("Ctrl-C: stopping the job, the agent, the aggregator%s", map[bool]string{true: " and MinIO", false: ""}[d.minio])
			return nil
		case ch := <-d.procs.exited:
			return fmt.Errorf("%s exited unexpectedly (%v); the end of %s:\n%s", ch.name, ch.err, ch.log, ch.logTail())
		case <-found:
			found = nil
			d.summary(w, problems, alertsOn, rc)
		case <-timeout:
			if found != nil {
				d.say("WARNING: not found after %v: %s. Look at the logs in %s", o.findingsTimeout,
					strings.Join(w.missing(), ", "), filepath.Join(d.runDir, "logs"))
			}
		}
	}
}

// summary is printed once every findable planted problem was found.
func (d *demo) summary(w *watcher, problems []problem, alertsOn bool, rc *receiver) {
	var capture string
	for _, p := range problems {
		if f, ok := w.found[p.name]; ok {
			capture = f.Scope.Capture
		}
	}
	n := 0
	for _, p := range problems {
		if p.needs == "" {
			n++
		}
	}
	d.say("all %d findable planted problems found, %.0fs after the start. See them in the dashboard:", n, time.Since(d.start).Seconds())
	d.say("  http://%s/jobs/demo/%s/default?capture=%s", d.o.addr, url.PathEscape(d.o.job), url.QueryEscape(capture))
	for _, p := range problems {
		if p.needs != "" {
			d.say("  not findable in this run: %s: needs %s", p.name, p.needs)
		}
	}
	if alertsOn {
		d.say("alerts: the receiver prints each one as it arrives (%s so far)", rc)
	}
	d.say("Press Ctrl-C to stop.")
}

func (d *demo) printPlan(problems []problem, recvURL string, alertsOn bool) {
	o := d.o
	path := "eBPF (root): uprobes on the stand-in libnccl trace every collective, the CPU profiler samples the ranks at 99 Hz;\n" +
		"         the ranks wait for each other after every iteration, as at a collective on real GPUs; the agent captures\n" +
		fmt.Sprintf("         on its own once the job is stable (trigger.at_iteration %d)", o.triggerAt)
	if !o.ebpf {
		path = "no eBPF (not root, or --ebpf off): the agent sees no NCCL calls and takes no CPU profile; the ranks' step\n" +
			"         markers give the iterations and the demo asks for a capture with `loupe-agent capture`; the ranks run\n" +
			"         unsynchronised so that the straggler shows in its step time"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nPath: %s\n\nPlanted problems:\n", path)
	for i, p := range problems {
		fmt.Fprintf(&b, "  %d. %-18s %s\n", i+1, p.name+":", p.planted)
		if p.needs != "" {
			fmt.Fprintf(&b, "     %-18s not findable in this run: needs %s\n", "", p.needs)
		}
	}
	fmt.Fprintf(&b, "\nURLs:\n")
	fmt.Fprintf(&b, "  dashboard        http://%s/\n", o.addr)
	fmt.Fprintf(&b, "  findings (API)   http://%s/api/v1/findings?job=%s\n", o.addr, url.QueryEscape(o.job))
	fmt.Fprintf(&b, "  captures (API)   http://%s/api/v1/captures\n", o.addr)
	fmt.Fprintf(&b, "  agent            http://%s/metrics   http://%s/v1/status\n", o.agentMetrics, o.agentAPI)
	if d.minio {
		fmt.Fprintf(&b, "  MinIO console    http://%s/  (user and password in %s)\n", o.consoleAdr, filepath.Join(d.runDir, "minio", "credentials"))
	} else {
		fmt.Fprintf(&b, "  store            %s\n", d.storeTo)
	}
	if alertsOn {
		fmt.Fprintf(&b, "  alert receiver   %s (HMAC-SHA256 signatures checked)\n", recvURL)
	} else {
		fmt.Fprintf(&b, "  alert receiver   %s (idle: this aggregator build has no webhooks setting yet)\n", recvURL)
	}
	fmt.Fprintf(&b, "  logs             %s\n\n", filepath.Join(d.runDir, "logs"))
	d.outMu.Lock()
	fmt.Fprint(d.out, b.String())
	d.outMu.Unlock()
}

// shutdown stops the processes in order: the job, the agent (which keeps
// what it captured), the aggregator, the store.
func (d *demo) shutdown() {
	if d.procs == nil {
		return
	}
	var killed []string
	var ranks []string
	for r := range d.o.ranks {
		ranks = append(ranks, fmt.Sprintf("rank%d", r))
	}
	for _, group := range [][]string{ranks, {"loupe-agent"}, {"loupe-aggregator"}, {"minio"}} {
		killed = append(killed, d.procs.stop(10*time.Second, group...)...)
	}
	killed = append(killed, d.procs.stop(5*time.Second)...)
	if len(killed) > 0 {
		d.say("stopped; had to kill %s", strings.Join(killed, ", "))
		return
	}
	d.say("stopped cleanly: every process the demo started has exited")
}

// serveReceiver serves the alert receiver until the returned stop is called.
func (d *demo) serveReceiver(rc *receiver) (string, func(), error) {
	ln, err := net.Listen("tcp", d.o.receiverAddr)
	if err != nil {
		return "", nil, fmt.Errorf("alert receiver: %w (set --receiver)", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/alerts", rc)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	return "http://" + ln.Addr().String() + "/alerts", func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	}, nil
}

// startStore starts MinIO, or picks a local folder.
func (d *demo) startStore(ctx context.Context, token string) error {
	o := d.o
	bin := filepath.Join(d.root, ".cache", "bin", "minio")
	if p := os.Getenv("LOUPE_MINIO_BIN"); p != "" {
		bin = p
	}
	_, statErr := os.Stat(bin)
	switch {
	case o.store == "dir" || o.store == "auto" && statErr != nil:
		dir := filepath.Join(d.runDir, "store")
		d.storeTo = "file://" + dir
		why := "--store dir"
		if o.store == "auto" {
			why = fmt.Sprintf("no MinIO at %s; `make minio` builds one", bin)
		}
		d.say("store: the local folder %s (%s)", dir, why)
		return os.MkdirAll(dir, 0o755)
	case statErr != nil:
		return fmt.Errorf("--store minio: no MinIO server at %s: build it with `make minio` (or set LOUPE_MINIO_BIN)", bin)
	}
	d.minio = true
	dir := filepath.Join(d.runDir, "minio")
	user, pass := "loupe-demo", randHex(12)
	cred := filepath.Join(dir, "credentials")
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(cred, fmt.Appendf(nil, "AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n", user, pass), 0o600); err != nil {
		return err
	}
	env := []string{
		"MINIO_ROOT_USER=" + user, "MINIO_ROOT_PASSWORD=" + pass, "MINIO_UPDATE=off",
		// The S3 event webhook: new manifests are posted to the aggregator.
		"MINIO_NOTIFY_WEBHOOK_ENABLE_LOUPE=on",
		"MINIO_NOTIFY_WEBHOOK_ENDPOINT_LOUPE=http://" + o.addr + "/api/v1/s3-events",
		"MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_LOUPE=" + token,
	}
	if _, err := d.procs.start("minio", env, bin, "server", "--address", o.minioAddr, "--console-address", o.consoleAdr, filepath.Join(dir, "data")); err != nil {
		return err
	}
	if err := d.waitHTTP(ctx, "minio", "http://"+o.minioAddr+"/minio/health/ready", 60*time.Second); err != nil {
		return err
	}
	c, err := minio.New(o.minioAddr, &minio.Options{Creds: credentials.NewStaticV4(user, pass, "")})
	if err != nil {
		return err
	}
	const bucket = "loupe-demo"
	if err := c.MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
		return fmt.Errorf("MinIO: creating bucket %s: %w", bucket, err)
	}
	q := url.Values{"endpoint": {o.minioAddr}, "secure": {"false"}, "region": {"us-east-1"}, "path_style": {"true"}, "credentials_file": {cred}}
	d.storeTo = (&url.URL{Scheme: "s3", Host: bucket, Path: "/", RawQuery: q.Encode()}).String()
	d.say("store: MinIO %s from %s, bucket %s, S3 event webhook to the aggregator", o.minioAddr, bin, bucket)
	return nil
}

// notifyAggregator subscribes the aggregator's webhook to new manifests.
// MinIO registers its webhook target in the background after it is ready.
func (d *demo) notifyAggregator(ctx context.Context) error {
	user, pass, err := readCredentials(filepath.Join(d.runDir, "minio", "credentials"))
	if err != nil {
		return err
	}
	c, err := minio.New(d.o.minioAddr, &minio.Options{Creds: credentials.NewStaticV4(user, pass, "")})
	if err != nil {
		return err
	}
	cfg := notification.NewConfig(notification.NewArn("minio", "sqs", "", "LOUPE", "webhook"))
	cfg.AddEvents(notification.ObjectCreatedAll)
	cfg.AddFilterSuffix("manifest.json")
	var nc notification.Configuration
	nc.AddQueue(cfg)
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := c.SetBucketNotification(ctx, "loupe-demo", nc)
		if err == nil {
			return nil
		}
		if !strings.Contains(err.Error(), "ARN") || time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("MinIO: subscribing the aggregator to new manifests: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func readCredentials(path string) (user, pass string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "AWS_ACCESS_KEY_ID":
			user = v
		case "AWS_SECRET_ACCESS_KEY":
			pass = v
		}
	}
	return user, pass, sc.Err()
}

// webhooksKey reports whether this aggregator build reads alert webhooks
// from its configuration (the `webhooks` key of alerts.Config).
func webhooksKey() bool {
	data, err := yaml.Marshal(aggregator.DefaultConfig())
	return err == nil && strings.Contains("\n"+string(data), "\nwebhooks:")
}

// startAggregator writes the aggregator's configuration and starts it. It
// reports whether alerts are wired.
func (d *demo) startAggregator(ctx context.Context, token, recvURL, secret string) (bool, error) {
	o := d.o
	cfg := map[string]any{
		"store": d.storeTo, "addr": o.addr, "webhook_token": token,
		// Listing is the fallback for missed S3 events, and the only way
		// in for a local-folder store: list often.
		"sweep_interval": "1s", "partition_timeout": "30s", "log_level": "info",
	}
	alertsOn := webhooksKey()
	if alertsOn {
		cfg["webhooks"] = []alerts.Target{{Name: "demo-receiver", Kind: alerts.KindWebhook, URL: recvURL,
			SecretEnv: "LOUPE_DEMO_WEBHOOK_SECRET", MinSeverity: "warning"}}
		cfg["dashboard_url"] = "http://" + o.addr
	}
	path := filepath.Join(d.runDir, "aggregator.yaml")
	if err := writeYAML(path, cfg); err != nil {
		return false, err
	}
	if _, err := d.procs.start("loupe-aggregator", []string{"LOUPE_DEMO_WEBHOOK_SECRET=" + secret},
		d.bins.aggregator, "serve", "--config", path); err != nil {
		return false, err
	}
	if err := d.waitHTTP(ctx, "loupe-aggregator", "http://"+o.addr+"/healthz", 30*time.Second); err != nil {
		return false, err
	}
	d.say("aggregator: http://%s/ (config %s)", o.addr, path)
	return alertsOn, nil
}

// metricValue is the value of an unlabelled metric in Prometheus text.
func metricValue(body, name string) (float64, bool) {
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// startJob starts the ranks, which wait for the go file.
func (d *demo) startJob() ([]int, error) {
	o := d.o
	args := []string{"--dir", filepath.Join(d.runDir, "job"),
		"--compute-ms", ms(o.computeTime),
		"--straggler", fmt.Sprintf("%d:%s", o.stragglerRank, ms(o.stragglerDelay)),
		"--loader", strconv.Itoa(o.loaderRank),
		"--agent", o.agentAPI, "--job", o.job}
	if !o.ebpf {
		args = append(args, "--no-sync")
	}
	var pids []int
	for r := range o.ranks {
		env := []string{"RANK=" + strconv.Itoa(r), "LOCAL_RANK=" + strconv.Itoa(r), "WORLD_SIZE=" + strconv.Itoa(o.ranks),
			"SLURM_JOB_ID=" + o.job}
		ch, err := d.procs.start(fmt.Sprintf("rank%d", r), env, d.bins.train, args...)
		if err != nil {
			return nil, err
		}
		pids = append(pids, ch.cmd.Process.Pid)
	}
	d.say("job %s: %d ranks (pids %v), RANK/LOCAL_RANK/WORLD_SIZE and SLURM_JOB_ID set; they create their communicator before the agent starts", o.job, o.ranks, pids)
	return pids, nil
}

// startAgent writes the agent's configuration (simulated GPUs showing the
// ranks as their processes, one throttling, the loader's GPU starved) and
// starts it; with eBPF it waits until the NCCL tracer attached to the ranks.
func (d *demo) startAgent(ctx context.Context, pids []int) error {
	o := d.o
	cfg := map[string]any{
		"metrics_addr": o.agentMetrics, "api_addr": o.agentAPI,
		"store": d.storeTo, "spool_dir": filepath.Join(d.runDir, "spool"),
		"simulate_gpus": o.ranks, "cluster": "demo", "host": "demo-gpu-node-1",
		"trigger": map[string]any{
			"disabled": !o.ebpf, "at_iteration": o.triggerAt, "window": 20,
			// Loose: a shared 2-core CI machine makes sleeps jitter.
			"max_cv": 0.5, "max_trend": 0.5,
			"iterations": o.captureIterations, "roundup": 10, "max_per_run": 1,
		},
		"upload": map[string]any{"interval": "1s"},
		"gpu": map[string]any{"simulate_problems": map[string]any{
			"throttled_gpus": []int{o.throttledGPU}, "starved_gpus": []int{o.loaderRank}, "pids": pids,
		}},
		"cpu": map[string]any{"enabled": o.ebpf, "hz": 99},
		// Its own stand-in libnccl only, not the NCCL jobs of the machine.
		"nccl": map[string]any{"enabled": o.ebpf, "scan_interval": "200ms", "step_interval": "1s",
			"plugin_socket": filepath.Join(d.runDir, "nccl-plugin.sock"), "libraries": []string{filepath.Dir(d.bins.lib)}},
		"kineto": map[string]any{"enabled": false},
	}
	path := filepath.Join(d.runDir, "agent.yaml")
	if err := writeYAML(path, cfg); err != nil {
		return err
	}
	if _, err := d.procs.start("loupe-agent", nil, d.bins.agent, "--config", path, "--simulate-gpus", strconv.Itoa(o.ranks)); err != nil {
		return err
	}
	if err := d.waitHTTP(ctx, "loupe-agent", "http://"+o.agentMetrics+"/healthz", 30*time.Second); err != nil {
		return err
	}
	d.say("agent: loupe-agent --config %s --simulate-gpus %d (GPU %d throttles, GPU %d starved of input)", path, o.ranks, o.throttledGPU, o.loaderRank)
	if !o.ebpf {
		return nil
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		body, _ := httpGet(ctx, "http://"+o.agentMetrics+"/metrics")
		// At least the job's ranks: other NCCL processes on the machine
		// count too.
		if n, ok := metricValue(body, "loupe_nccl_attached_processes"); ok && n >= float64(o.ranks) {
			d.say("agent: NCCL uprobes attached to %s in all %d ranks", d.bins.lib, o.ranks)
			return nil
		}
		if strings.Contains(body, "\nloupe_collector_up{collector=\"nccl\"} 0\n") || time.Now().After(deadline) {
			d.say("WARNING: the agent's NCCL tracer did not attach (see %s); the straggler may not be found",
				filepath.Join(d.runDir, "logs", "loupe-agent.log"))
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// captureOnDemand is the path without eBPF: once the job has run
// trigger-at iterations, ask for a capture with the agent's own CLI.
func (d *demo) captureOnDemand(ctx context.Context) {
	c := &agentapi.Client{Addr: d.o.agentAPI}
	for {
		rep, err := c.Steps(ctx, d.o.job)
		if err == nil && len(rep.Ranks) == d.o.ranks && minIteration(rep) >= int64(d.o.triggerAt) {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
	// A timed window: unsynchronised ranks are at different iterations.
	window := time.Duration(d.o.captureIterations) * (d.o.computeTime + d.o.stragglerDelay)
	args := []string{"capture", "--api-addr", d.o.agentAPI, "--job", d.o.job, "--duration", window.String()}
	d.say("$ loupe-agent %s", strings.Join(args, " "))
	out, err := exec.CommandContext(ctx, d.bins.agent, args...).CombinedOutput()
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		d.say("  %s", l)
	}
	if err != nil && ctx.Err() == nil {
		d.say("WARNING: loupe-agent capture failed: %v", err)
	}
}

func minIteration(rep agentapi.StepsReply) int64 {
	m := rep.Ranks[0].Iteration
	for _, r := range rep.Ranks {
		m = min(m, r.Iteration)
	}
	return m
}

// followCaptures prints the agent's captures as their state changes.
func (d *demo) followCaptures(ctx context.Context) {
	c := &agentapi.Client{Addr: d.o.agentAPI}
	state := map[string]string{}
	for {
		if st, err := c.Status(ctx); err == nil {
			for _, cp := range st.Captures {
				if state[cp.ID] == cp.State {
					continue
				}
				state[cp.ID] = cp.State
				msg := fmt.Sprintf("agent: capture %s of job %s: %s", cp.ID, cp.Job, cp.State)
				if cp.State == "committed" {
					msg += fmt.Sprintf(" (%d processes, parts %s); uploading to the store", len(cp.Processes), strings.Join(cp.Parts, ", "))
				}
				if cp.Error != "" {
					msg += ": " + cp.Error
				}
				d.say("%s", msg)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// waitHTTP polls url until it answers 200, the child dies, or timeout.
func (d *demo) waitHTTP(ctx context.Context, name, u string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := httpGet(ctx, u); err == nil {
			return nil
		}
		select {
		case ch := <-d.procs.exited:
			return fmt.Errorf("%s exited during start-up (%v); the end of %s:\n%s", ch.name, ch.err, ch.log, ch.logTail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer %s within %v; see %s", name, u, timeout, filepath.Join(d.runDir, "logs", name+".log"))
		}
	}
}

func httpGet(ctx context.Context, u string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: HTTP %d", u, resp.StatusCode)
	}
	return string(body), err
}

func writeYAML(path string, v any) error {
	data, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', -1, 64)
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// repoRoot finds the module root above the working directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run the demo inside the Loupe repository (no go.mod above the working directory)")
		}
		dir = parent
	}
}
