// Command loadgen is the load generator of the flask-sse-hub benchmark.
//
//	loadgen [flags]            run one scenario against --url, print JSON
//	loadgen --ceiling [flags]  the same against its own trivial Go server
//	loadgen --storm-events E   the resume storm (storm.go): E events first, then
//	                           --streams streams resuming at once
//	loadgen serve --addr A     only the trivial server
//
// It opens --streams concurrent SSE streams over real sockets, waits until
// each has received its first chunk, optionally holds them idle, then
// publishes --events events through POST /publish (single or batched, at
// --rate events/s or as fast as possible, from --publishers keep-alive
// connections; or, with --ndjson, as one streaming request per publisher). Each event's data is {"seq":N,"t":<send time, ns since the
// epoch>}. Streams are parsed per WHATWG; a stream that ends is reopened with
// Last-Event-ID like an EventSource. See bench/README.md.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type config struct {
	URL            string
	StreamPath     string
	PublishPath    string
	Channel        string
	Streams        int
	Events         int
	Rate           float64
	Batch          int
	NDJSON         bool
	Publishers     int
	DialConc       int
	ConnectTimeout time.Duration
	Hold           time.Duration
	DrainTimeout   time.Duration
	Deadline       time.Duration
	ReconnectDelay time.Duration
	ServerPID      int
	AuxPID         int
	Warmup         bool
	Token          string
	Ceiling        bool
	CeilingCPU     string
	Out            string
	Label          string
	PhaseFile      string
	EventBytes     int
	StormEvents    int
	StormSpan      float64
	StormPublishes int
	StormInterval  time.Duration
}

type stream struct {
	idx        int
	counts     []uint8
	lat        []int32 // publish->receive, microseconds
	delivered  int
	dups       int
	outOfOrder int
	other      int
	gaps       int
	lastSeq    int64
	reconnects int
	opened     bool
	lastErr    string
	parser     *Parser

	// resume storm (storm.go)
	from       int   // index of the resume id: events after it are expected
	need       int   // pre-published events after it
	resumed    int   // of those, received
	unexpected int   // pre-published events at or before the resume id
	doneAt     int64 // unix ns when resumed reached need

	mu   sync.Mutex
	conn net.Conn
}

type gen struct {
	cfg       config
	addr      string
	host      string
	delivered int64 // unique deliveries, all streams
	lastRecv  int64 // unix ns of the latest unique delivery
	stopping  int32
	seqKey    []byte
	tKey      []byte
	pad       string // `,"pad":"xxx"` making each event about --event-bytes

	stormRemaining int64 // streams still missing pre-published events
	replayed       int64 // unique deliveries of pre-published events
	liveDelivered  int64 // unique deliveries of events published during the storm
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		serveMain(os.Args[2:])
		return
	}
	var c config
	flag.StringVar(&c.URL, "url", "http://127.0.0.1:8000", "server base URL")
	flag.StringVar(&c.StreamPath, "stream-path", "/stream", "subscribe path")
	flag.StringVar(&c.PublishPath, "publish-path", "/publish", "publish path")
	flag.StringVar(&c.Channel, "channel", "bench", "channel of the streams and events")
	flag.IntVar(&c.Streams, "streams", 100, "concurrent streams")
	flag.IntVar(&c.Events, "events", 100, "events to publish")
	flag.Float64Var(&c.Rate, "rate", 0, "events per second (0: as fast as possible)")
	flag.IntVar(&c.Batch, "batch", 1, "events per POST /publish (1: a single JSON object)")
	flag.BoolVar(&c.NDJSON, "ndjson", false, "streaming publish: each publisher sends one long POST of newline-delimited JSON, one event per line (ndjson.go); --batch and --rate are ignored")
	flag.IntVar(&c.Publishers, "publishers", 1, "concurrent publisher connections")
	flag.IntVar(&c.DialConc, "dial-concurrency", 200, "streams being opened at once")
	flag.DurationVar(&c.ConnectTimeout, "connect-timeout", 60*time.Second, "give up opening streams after this")
	flag.DurationVar(&c.Hold, "hold", 0, "hold the open streams idle this long before publishing")
	flag.DurationVar(&c.DrainTimeout, "drain-timeout", 10*time.Second, "after publishing, stop when no event arrived for this long")
	flag.DurationVar(&c.Deadline, "deadline", 300*time.Second, "stop this long after the first publish whatever happens")
	flag.DurationVar(&c.ReconnectDelay, "reconnect-delay", 100*time.Millisecond, "wait before reopening an ended stream")
	flag.IntVar(&c.ServerPID, "server-pid", 0, "server PID: RSS and CPU of it and its descendants")
	flag.IntVar(&c.AuxPID, "aux-pid", 0, "helper PID (e.g. redis-server) measured separately")
	flag.BoolVar(&c.Warmup, "warmup", true, "one stream and one event on channel 'warmup' before the baseline")
	flag.StringVar(&c.Token, "token", "", "bearer token for POST /publish")
	flag.BoolVar(&c.Ceiling, "ceiling", false, "run against the built-in trivial Go server (the generator's ceiling)")
	flag.StringVar(&c.CeilingCPU, "ceiling-cpu", "0", "CPU list the --ceiling server is pinned to (taskset)")
	flag.StringVar(&c.Out, "out", "", "write the JSON report here (default: stdout)")
	flag.StringVar(&c.Label, "label", "", "free text copied into the report")
	flag.StringVar(&c.PhaseFile, "phase-file", "", "write the current phase (connecting, publishing, done) here, for profilers")
	flag.IntVar(&c.EventBytes, "event-bytes", 0, "pad each event's data to about this many bytes (0: no padding)")
	flag.IntVar(&c.StormEvents, "storm-events", 0, "resume storm: publish this many events with no stream open, then open --streams streams at once, each resuming (Last-Event-ID) from an early id")
	flag.Float64Var(&c.StormSpan, "storm-span", 1.0/3, "resume storm: resume ids are spread over this leading fraction of the events")
	flag.IntVar(&c.StormPublishes, "storm-publishes", 300, "resume storm: at most this many single POSTs during the storm (latency probe; small events, unpadded)")
	flag.DurationVar(&c.StormInterval, "storm-publish-interval", 200*time.Millisecond, "resume storm: one probe POST this often until every stream has resumed")
	flag.Parse()
	if c.Batch < 1 || c.NDJSON {
		c.Batch = 1
	}
	if c.Publishers < 1 {
		c.Publishers = 1
	}
	nofile := raiseNoFile()

	var server *exec.Cmd
	if c.Ceiling {
		var err error
		server, c.URL, err = startCeilingServer(c.CeilingCPU)
		if err != nil {
			fatal("ceiling server: %v", err)
		}
		c.ServerPID = server.Process.Pid
		defer func() { server.Process.Kill(); server.Wait() }()
	}
	u, err := url.Parse(c.URL)
	if err != nil || u.Host == "" {
		fatal("bad --url %q", c.URL)
	}
	g := &gen{cfg: c, addr: u.Host, host: u.Host, seqKey: []byte(`"seq"`), tKey: []byte(`"t"`)}
	// {"seq":N,"t":19 digits} is about 40 bytes; the pad makes up the rest.
	if n := c.EventBytes - 40 - len(`,"pad":""`); n > 0 {
		g.pad = `,"pad":"` + strings.Repeat("x", n) + `"`
	}
	var report map[string]any
	if c.StormEvents > 0 {
		report = g.runStorm()
	} else {
		report = g.run()
	}
	report["nofile_limit"] = nofile
	report["gomaxprocs"] = runtime.GOMAXPROCS(0)
	if c.Ceiling {
		report["ceiling"] = true
	}
	out, _ := json.MarshalIndent(report, "", "  ")
	if c.Out != "" {
		if err := os.WriteFile(c.Out, append(out, '\n'), 0o644); err != nil {
			fatal("%v", err)
		}
	} else {
		os.Stdout.Write(append(out, '\n'))
	}
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", args...)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s loadgen: "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

func startCeilingServer(cpus string) (*exec.Cmd, string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	args := []string{self, "serve", "--addr", "127.0.0.1:0"}
	if ts, err := exec.LookPath("taskset"); err == nil && cpus != "" {
		args = append([]string{ts, "-c", cpus}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		return nil, "", err
	}
	addr := strings.TrimSpace(strings.TrimPrefix(line, "listening "))
	return cmd, "http://" + addr, nil
}

// -- streams -----------------------------------------------------------------

func (g *gen) open(channel string, lastID []byte) (net.Conn, io.Reader, error) {
	conn, err := net.DialTimeout("tcp", g.addr, 10*time.Second)
	if err != nil {
		return nil, nil, err
	}
	var req bytes.Buffer
	fmt.Fprintf(&req, "GET %s?channel=%s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
		g.cfg.StreamPath, url.QueryEscape(channel), g.host)
	if len(lastID) > 0 {
		fmt.Fprintf(&req, "Last-Event-ID: %s\r\n", lastID)
	}
	req.WriteString("\r\n")
	conn.SetDeadline(time.Now().Add(g.cfg.ConnectTimeout))
	if _, err := conn.Write(req.Bytes()); err != nil {
		conn.Close()
		return nil, nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 4096), nil)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	if resp.StatusCode != 200 {
		conn.Close()
		return nil, nil, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return conn, resp.Body, nil
}

// opening is a set of streams being opened, at most DialConc connecting at once, then held.
type opening struct {
	t0       time.Time
	opened   sync.WaitGroup // done once every stream is open or has given up
	done     sync.WaitGroup // done once every stream's goroutine has ended
	lastOpen int64          // unix ns of the last stream's first chunk (atomic)
}

// openStreams starts one goroutine per stream (runStream) and returns at once.
func (g *gen) openStreams(streams []*stream) *opening {
	op := &opening{t0: time.Now()}
	sem := make(chan struct{}, g.cfg.DialConc)
	deadline := op.t0.Add(g.cfg.ConnectTimeout)
	for _, s := range streams {
		op.opened.Add(1)
		op.done.Add(1)
		go func(s *stream) {
			defer op.done.Done()
			g.runStream(s, sem, &op.opened, deadline, &op.lastOpen)
		}(s)
	}
	return op
}

// runStream keeps one stream open until the generator stops; openedWG is
// released once, when the stream first receives data or gives up opening.
func (g *gen) runStream(s *stream, sem chan struct{}, openedWG *sync.WaitGroup, openDeadline time.Time, lastOpen *int64) {
	buf := make([]byte, 16<<10)
	first := true
	signal := func() {
		if first {
			first = false
			openedWG.Done()
		}
	}
	defer signal()
	for atomic.LoadInt32(&g.stopping) == 0 {
		if first {
			sem <- struct{}{}
		}
		conn, body, err := g.open(g.cfg.Channel, s.parser.LastID)
		var n int
		if err == nil {
			s.mu.Lock()
			s.conn = conn
			s.mu.Unlock()
			if atomic.LoadInt32(&g.stopping) != 0 {
				conn.Close()
			}
			n, err = body.Read(buf)
			if n > 0 {
				conn.SetDeadline(time.Time{})
			}
		}
		if first {
			<-sem
		}
		if n > 0 {
			if first {
				s.opened = true
				now := time.Now().UnixNano()
				for {
					old := atomic.LoadInt64(lastOpen)
					if now <= old || atomic.CompareAndSwapInt64(lastOpen, old, now) {
						break
					}
				}
				signal()
			}
			s.parser.Reset()
			s.parser.Feed(buf[:n])
			for {
				n, err = body.Read(buf)
				if n > 0 {
					s.parser.Feed(buf[:n])
				}
				if err != nil {
					break
				}
			}
		}
		if conn != nil {
			conn.Close()
		}
		if atomic.LoadInt32(&g.stopping) != 0 {
			return
		}
		if err == nil || errors.Is(err, io.EOF) {
			err = errors.New("stream ended")
		}
		s.lastErr = err.Error()
		if first && time.Now().After(openDeadline) {
			return
		}
		if !first {
			s.reconnects++
		}
		time.Sleep(g.cfg.ReconnectDelay)
	}
}

func (g *gen) onEvent(s *stream) func(typ, data, id []byte) {
	return func(typ, data, id []byte) {
		seq, ok := jsonInt(data, g.seqKey)
		if !ok || seq < 0 || seq >= int64(len(s.counts)) {
			if string(typ) == "sse-hub-gap" {
				s.gaps++
			} else {
				s.other++
			}
			return
		}
		if s.counts[seq] > 0 {
			s.dups++
			if s.counts[seq] < 255 {
				s.counts[seq]++
			}
			return
		}
		now := time.Now().UnixNano()
		sent, _ := jsonInt(data, g.tKey)
		s.counts[seq] = 1
		s.delivered++
		s.lat = append(s.lat, int32((now-sent)/1000))
		if seq < s.lastSeq {
			s.outOfOrder++
		}
		s.lastSeq = seq
		atomic.AddInt64(&g.delivered, 1)
		for {
			old := atomic.LoadInt64(&g.lastRecv)
			if now <= old || atomic.CompareAndSwapInt64(&g.lastRecv, old, now) {
				break
			}
		}
	}
}

// -- publishing ----------------------------------------------------------------

type publisher struct {
	g       *gen
	client  *http.Client
	url     string
	ok      []bool // per seq: accepted by the server
	reqLat  []float64
	errors  int
	lastErr string
	first   int64 // unix ns of the first request
	noPad   bool  // events without the --event-bytes padding
	mu      sync.Mutex
}

func (p *publisher) body(lo, hi int, now int64, buf *bytes.Buffer) {
	p.encode(lo, hi, now, buf, p.g.cfg.Batch > 1)
}

// encode writes events lo..hi-1 as a JSON array (batch) or a single object.
func (p *publisher) encode(lo, hi int, now int64, buf *bytes.Buffer, batch bool) {
	buf.Reset()
	if batch {
		buf.WriteByte('[')
	}
	for i := lo; i < hi; i++ {
		if i > lo {
			buf.WriteByte(',')
		}
		buf.WriteString(`{"channel":"`)
		buf.WriteString(p.g.cfg.Channel)
		buf.WriteString(`","data":{"seq":`)
		buf.WriteString(strconv.Itoa(i))
		buf.WriteString(`,"t":`)
		buf.WriteString(strconv.FormatInt(now, 10))
		if !p.noPad {
			buf.WriteString(p.g.pad)
		}
		buf.WriteString(`}}`)
	}
	if batch {
		buf.WriteByte(']')
	}
}

func (p *publisher) post(body []byte) error {
	_, err := p.postRead(body)
	return err
}

// postRead posts body and returns the answer of a 2xx response.
func (p *publisher) postRead(body []byte) ([]byte, error) {
	req, _ := http.NewRequest("POST", p.url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if p.g.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+p.g.cfg.Token)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("HTTP %d: %.200s", resp.StatusCode, msg)
	}
	return msg, nil
}

func (p *publisher) run(events int, start time.Time) {
	c := p.g.cfg
	if c.NDJSON {
		p.runNDJSON(events)
		return
	}
	batches := (events + c.Batch - 1) / c.Batch
	var next int64 = -1
	var wg sync.WaitGroup
	for w := 0; w < c.Publishers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf bytes.Buffer
			var lats []float64
			errs := 0
			lastErr := ""
			for {
				k := int(atomic.AddInt64(&next, 1))
				if k >= batches {
					break
				}
				if c.Rate > 0 {
					at := start.Add(time.Duration(float64(k*c.Batch) / c.Rate * 1e9))
					if d := time.Until(at); d > 0 {
						time.Sleep(d)
					}
				}
				lo, hi := k*c.Batch, (k+1)*c.Batch
				if hi > events {
					hi = events
				}
				t0 := time.Now()
				now := t0.UnixNano()
				atomic.CompareAndSwapInt64(&p.first, 0, now)
				p.body(lo, hi, now, &buf)
				if err := p.post(buf.Bytes()); err != nil {
					errs++
					lastErr = err.Error()
					continue
				}
				lats = append(lats, float64(time.Since(t0).Microseconds())/1000)
				for i := lo; i < hi; i++ {
					p.ok[i] = true
				}
			}
			p.record(lats, errs, lastErr)
		}()
	}
	wg.Wait()
}

// record adds one publisher connection's request latencies and errors.
func (p *publisher) record(lats []float64, errs int, lastErr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reqLat = append(p.reqLat, lats...)
	p.errors += errs
	if lastErr != "" {
		p.lastErr = lastErr
	}
}

func newClient(conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		MaxIdleConns:        conns + 4,
		MaxIdleConnsPerHost: conns + 4,
		DisableCompression:  true,
		IdleConnTimeout:     time.Minute,
	}, Timeout: 60 * time.Second}
}

// warmup opens one stream on channel "warmup", publishes one event and waits
// for it, so that lazily started machinery is in the RSS baseline.
func (g *gen) warmup() error {
	conn, body, err := g.open("warmup", nil)
	if err != nil {
		return err
	}
	defer conn.Close()
	got := make(chan struct{}, 1)
	p := NewParser(func(_, _, _ []byte) {
		select {
		case got <- struct{}{}:
		default:
		}
	})
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := body.Read(buf)
			p.Feed(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond)
	pub := &publisher{g: g, client: newClient(1), url: strings.TrimRight(g.cfg.URL, "/") + g.cfg.PublishPath}
	if err := pub.post([]byte(`{"channel":"warmup","data":"warm-up"}`)); err != nil {
		return err
	}
	select {
	case <-got:
		return nil
	case <-time.After(10 * time.Second):
		return errors.New("warm-up event not received in 10 s")
	}
}

// -- the run -------------------------------------------------------------------

func percentile(sorted []int32, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	if i < 0 {
		i = 0
	}
	return float64(sorted[i]) / 1000
}

func percentileF(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	if i < 0 {
		i = 0
	}
	return sorted[i]
}

func round(x float64, digits int) any {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return nil
	}
	p := math.Pow(10, float64(digits))
	return math.Round(x*p) / p
}

func (g *gen) phase(name string) {
	if g.cfg.PhaseFile != "" {
		os.WriteFile(g.cfg.PhaseFile, []byte(name+"\n"), 0o644)
	}
}

// stopStreams closes every stream and waits (10 s at most) for their goroutines.
func (g *gen) stopStreams(streams []*stream, doneWG *sync.WaitGroup) []string {
	atomic.StoreInt32(&g.stopping, 1)
	for _, s := range streams {
		s.mu.Lock()
		if s.conn != nil {
			s.conn.Close()
		}
		s.mu.Unlock()
	}
	waited := make(chan struct{})
	go func() { doneWG.Wait(); close(waited) }()
	select {
	case <-waited:
		return nil
	case <-time.After(10 * time.Second):
		return []string{"some stream goroutines did not stop in 10 s"}
	}
}

func (g *gen) run() map[string]any {
	c := g.cfg
	g.phase("connecting")
	rep := map[string]any{"config": c, "label": c.Label}
	warn := []string{}
	if c.Warmup {
		if err := g.warmup(); err != nil {
			warn = append(warn, "warm-up: "+err.Error())
			logf("warm-up failed: %v", err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	rssBase := rssKB(c.ServerPID)
	auxBase := rssKB(c.AuxPID)

	// Open the streams.
	streams := make([]*stream, c.Streams)
	for i := range streams {
		s := &stream{idx: i, counts: make([]uint8, c.Events), lastSeq: -1}
		s.parser = NewParser(g.onEvent(s))
		streams[i] = s
	}
	op := g.openStreams(streams)
	t0 := op.t0
	op.opened.Wait()
	opened := 0
	for _, s := range streams {
		if s.opened {
			opened++
		}
	}
	connectSec := 0.0
	if lastOpen := atomic.LoadInt64(&op.lastOpen); lastOpen > 0 {
		connectSec = float64(lastOpen-t0.UnixNano()) / 1e9
	}
	logf("%d/%d streams open in %.2f s", opened, c.Streams, connectSec)
	time.Sleep(300 * time.Millisecond)
	rssConnected := rssKB(c.ServerPID)
	rssHeld := int64(0)
	if c.Hold > 0 {
		time.Sleep(c.Hold)
		rssHeld = rssKB(c.ServerPID)
	}
	auxConnected := rssKB(c.AuxPID)
	reconnectsBefore := 0
	for _, s := range streams {
		reconnectsBefore += s.reconnects // racy read, informational only
	}

	// Publish, sampling the server's RSS meanwhile.
	pub := &publisher{g: g, client: newClient(c.Publishers), url: strings.TrimRight(c.URL, "/") + c.PublishPath,
		ok: make([]bool, c.Events)}
	stopSampling := sampleRSS(c.ServerPID, rssConnected)
	g.phase("publishing")
	cpuServer0 := cpuSeconds(c.ServerPID)
	cpuAux0 := cpuSeconds(c.AuxPID)
	cpuSelf0 := selfCPUSeconds()
	pubStart := time.Now()
	pubDone := make(chan struct{})
	var pubFinished time.Time
	go func() {
		pub.run(c.Events, pubStart)
		pubFinished = time.Now()
		close(pubDone)
	}()
	var pubEnd time.Time
	lastCount := int64(-1)
	lastProgress := time.Now()
	timedOut := false
	expected := int64(-1)
	for {
		time.Sleep(20 * time.Millisecond)
		now := time.Now()
		select {
		case <-pubDone:
			if expected < 0 {
				pubEnd = pubFinished
				okCount := 0
				for _, ok := range pub.ok {
					if ok {
						okCount++
					}
				}
				expected = int64(okCount) * int64(opened)
			}
		default:
		}
		d := atomic.LoadInt64(&g.delivered)
		if d != lastCount {
			lastCount, lastProgress = d, now
		}
		if expected >= 0 && d >= expected {
			break
		}
		if expected >= 0 && now.Sub(lastProgress) > c.DrainTimeout {
			timedOut = true
			break
		}
		if now.Sub(pubStart) > c.Deadline {
			timedOut = true
			break
		}
	}
	burstEnd := time.Now()
	g.phase("done")
	cpuServer := cpuSeconds(c.ServerPID) - cpuServer0
	cpuAux := cpuSeconds(c.AuxPID) - cpuAux0
	cpuSelf := selfCPUSeconds() - cpuSelf0
	rssPeak := stopSampling()
	rssEnd := rssKB(c.ServerPID)
	auxEnd := rssKB(c.AuxPID)
	if pubEnd.IsZero() {
		pubEnd = burstEnd
	}

	warn = append(warn, g.stopStreams(streams, &op.done)...)
	select {
	case <-pubDone:
	default:
		warn = append(warn, "publishing had not finished at the deadline")
	}

	// Analyse.
	var lats []int32
	missing, dups, outOfOrder, other, gaps, reconnects := 0, 0, 0, 0, 0, 0
	streamsMissing, maxMissing, maxDups := 0, 0, 0
	var deliveries int64
	errCounts := map[string]int{}
	published := 0
	pub.mu.Lock()
	okCopy := append([]bool(nil), pub.ok...)
	pub.mu.Unlock()
	for _, ok := range okCopy {
		if ok {
			published++
		}
	}
	for _, s := range streams {
		if s.lastErr != "" {
			errCounts[s.lastErr]++
		}
		if !s.opened {
			continue
		}
		lats = append(lats, s.lat...)
		m := 0
		for i, n := range s.counts {
			if n == 0 && okCopy[i] {
				m++
			}
		}
		missing += m
		if m > 0 {
			streamsMissing++
		}
		if m > maxMissing {
			maxMissing = m
		}
		if s.dups > maxDups {
			maxDups = s.dups
		}
		dups += s.dups
		outOfOrder += s.outOfOrder
		other += s.other
		gaps += s.gaps
		reconnects += s.reconnects
		deliveries += int64(s.delivered)
	}
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	firstPub := time.Unix(0, atomic.LoadInt64(&pub.first))
	lastRecv := time.Unix(0, atomic.LoadInt64(&g.lastRecv))
	burst := lastRecv.Sub(firstPub).Seconds()
	if deliveries == 0 || burst <= 0 {
		burst = math.NaN()
	}
	sort.Float64s(pub.reqLat)
	pubSec := pubEnd.Sub(pubStart).Seconds()
	requests := (c.Events + c.Batch - 1) / c.Batch
	if c.NDJSON { // a "request" is a line: publish_requests_per_s is lines/s
		requests = c.Events
	}
	sum := 0.0
	for _, l := range lats {
		sum += float64(l)
	}
	kbPer := func(rss int64) any {
		if c.ServerPID == 0 || opened == 0 || rss == 0 {
			return nil
		}
		return round(float64(rss-rssBase)/float64(opened), 2)
	}
	auxKBPer := any(nil)
	if c.AuxPID != 0 && opened > 0 {
		auxKBPer = round(float64(auxConnected-auxBase)/float64(opened), 2)
	}
	wall := burstEnd.Sub(pubStart).Seconds()
	rep["streams"] = c.Streams
	rep["streams_opened"] = opened
	rep["connect_seconds"] = round(connectSec, 3)
	rep["stream_errors"] = errCounts
	rep["events"] = c.Events
	rep["published"] = published
	rep["publish_requests"] = requests
	rep["publish_errors"] = pub.errors
	rep["publish_last_error"] = pub.lastErr
	rep["publish_seconds"] = round(pubSec, 3)
	rep["publish_requests_per_s"] = round(float64(requests-pub.errors)/pubSec, 1)
	rep["publish_events_per_s"] = round(float64(published)/pubSec, 1)
	rep["publish_request_ms"] = map[string]any{
		"p50": round(percentileF(pub.reqLat, 0.5), 3), "p99": round(percentileF(pub.reqLat, 0.99), 3),
		"max": round(percentileF(pub.reqLat, 1), 3)}
	rep["expected_deliveries"] = int64(published) * int64(opened)
	rep["deliveries"] = deliveries
	rep["burst_seconds"] = round(burst, 3)
	rep["deliveries_per_s"] = round(float64(deliveries)/burst, 1)
	rep["latency_ms"] = map[string]any{
		"p50": round(percentile(lats, 0.5), 2), "p90": round(percentile(lats, 0.9), 2),
		"p99": round(percentile(lats, 0.99), 2), "max": round(percentile(lats, 1), 2),
		"mean": round(sum/float64(len(lats))/1000, 2)}
	rep["missing"] = missing
	rep["duplicates"] = dups
	rep["streams_with_missing"] = streamsMissing
	rep["max_missing_per_stream"] = maxMissing
	rep["max_duplicates_per_stream"] = maxDups
	rep["out_of_order"] = outOfOrder
	rep["other_events"] = other
	rep["gap_events"] = gaps
	rep["reconnects"] = reconnects
	rep["reconnects_before_publish"] = reconnectsBefore
	rep["timed_out"] = timedOut
	rep["rss_kb"] = map[string]any{"baseline": rssBase, "connected": rssConnected, "held": rssHeld,
		"peak": rssPeak, "end": rssEnd}
	rep["kb_per_stream"] = kbPer(rssConnected)
	if c.Hold > 0 {
		rep["kb_per_stream_held"] = kbPer(rssHeld)
	}
	rep["aux_rss_kb"] = map[string]any{"baseline": auxBase, "connected": auxConnected, "end": auxEnd}
	rep["aux_kb_per_stream"] = auxKBPer
	rep["cpu"] = map[string]any{
		"wall_seconds": round(wall, 3),
		"server_pct":   round(100*cpuServer/wall, 1),
		"aux_pct":      round(100*cpuAux/wall, 1),
		"loadgen_pct":  round(100*cpuSelf/wall, 1),
	}
	rep["warnings"] = warn
	logf("%d/%d deliveries in %.2f s (%.0f/s), p99 %.1f ms, missing %d, dups %d, reconnects %d",
		deliveries, int64(published)*int64(opened), burst, float64(deliveries)/burst,
		percentile(lats, 0.99), missing, dups, reconnects)
	return rep
}
