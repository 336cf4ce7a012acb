// Command nativeload is a pipelined load client for rpcd's native protocol.
// It keeps -inflight CALL frames outstanding on each of -conns connections,
// checks every RESULT, and prints, as its last stdout line, the same JSON
// result as the anchors harness's clients (calls, secs, rate, p50_us, p99_us,
// errors, server_cpu_s, client_cpu_s, ...), so its rows sit beside theirs.
//
// Wire format (see rpcd/wire/frames.py): each side first sends the 8-byte
// preface 00 'R' 'P' 'C' 'D' 01 00 00; then frames, u32be length + msgpack
// array. A call is [0, id, "Arith.Multiply", {"A": a, "B": b}]; the reply is
// [1, id, a*b] or [2, id, code, message, details]. The small msgpack values
// are encoded and decoded by hand (Go standard library only).
//
// The loop is the anchors' bench.Pipeline: one goroutine per connection
// sends -inflight calls, then reads every reply that has arrived and answers
// that burst of k replies with k new calls in a single write (as an event
// loop would). -flush-each makes every call its own write.
//
//	nativeload -addr 127.0.0.1:1234 -conns 1 -inflight 64 -server-pid PID -dur 3s
//	nativeload -addr 127.0.0.1:1234 -check
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var preface = []byte{0, 'R', 'P', 'C', 'D', 1, 0, 0}

// ---- msgpack, the few shapes this client needs

func appendUint(b []byte, v uint64) []byte {
	switch {
	case v < 128:
		return append(b, byte(v))
	case v < 1<<8:
		return append(b, 0xcc, byte(v))
	case v < 1<<16:
		return append(append(b, 0xcd), byte(v>>8), byte(v))
	case v < 1<<32:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcf), v)
}

func appendInt(b []byte, v int64) []byte {
	if v >= 0 {
		return appendUint(b, uint64(v))
	}
	if v >= -32 {
		return append(b, byte(v))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(v))
}

func appendStr(b []byte, s string) []byte {
	switch n := len(s); {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n < 1<<8:
		b = append(b, 0xd9, byte(n))
	case n < 1<<16:
		b = binary.BigEndian.AppendUint16(append(b, 0xda), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xdb), uint32(n))
	}
	return append(b, s...)
}

var errShort = errors.New("truncated msgpack value")

// readInt decodes one msgpack integer at p[i:]; ok=false if it is not one.
func readInt(p []byte, i int) (v int64, next int, ok bool) {
	if i >= len(p) {
		return 0, i, false
	}
	c := p[i]
	need := func(n int) bool { return i+1+n <= len(p) }
	switch {
	case c < 0x80:
		return int64(c), i + 1, true
	case c >= 0xe0:
		return int64(int8(c)), i + 1, true
	case c == 0xcc && need(1):
		return int64(p[i+1]), i + 2, true
	case c == 0xcd && need(2):
		return int64(binary.BigEndian.Uint16(p[i+1:])), i + 3, true
	case c == 0xce && need(4):
		return int64(binary.BigEndian.Uint32(p[i+1:])), i + 5, true
	case c == 0xcf && need(8):
		return int64(binary.BigEndian.Uint64(p[i+1:])), i + 9, true
	case c == 0xd0 && need(1):
		return int64(int8(p[i+1])), i + 2, true
	case c == 0xd1 && need(2):
		return int64(int16(binary.BigEndian.Uint16(p[i+1:]))), i + 3, true
	case c == 0xd2 && need(4):
		return int64(int32(binary.BigEndian.Uint32(p[i+1:]))), i + 5, true
	case c == 0xd3 && need(8):
		return int64(binary.BigEndian.Uint64(p[i+1:])), i + 9, true
	}
	return 0, i, false
}

// ---- the codec

type codec struct {
	method  string
	out     []byte
	in      []byte
	lastErr string
}

func args(seq uint64) (int64, int64) { return int64(seq % 1000), 7 }

// encode appends one CALL frame for call id seq to c.out.
func (c *codec) encode(seq uint64) {
	a, b := args(seq)
	start := len(c.out)
	c.out = append(c.out, 0, 0, 0, 0, 0x94, 0x00)
	c.out = appendUint(c.out, seq)
	c.out = appendStr(c.out, c.method)
	c.out = append(c.out, 0x82, 0xa1, 'A')
	c.out = appendInt(c.out, a)
	c.out = append(c.out, 0xa1, 'B')
	c.out = appendInt(c.out, b)
	binary.BigEndian.PutUint32(c.out[start:], uint32(len(c.out)-start-4))
}

// decode reads one frame and returns the call id it answers; ok=false for an
// ERROR frame or a wrong result.
func (c *codec) decode(r *bufio.Reader) (uint64, bool, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, false, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if n > 1<<24 {
		return 0, false, fmt.Errorf("reply frame of %d bytes", n)
	}
	if cap(c.in) < n {
		c.in = make([]byte, n)
	}
	p := c.in[:n]
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, false, err
	}
	if n < 3 || p[0]&0xf0 != 0x90 {
		return 0, false, fmt.Errorf("reply is not a msgpack array: % x", p)
	}
	kind, i, ok := readInt(p, 1)
	if !ok {
		return 0, false, fmt.Errorf("reply without a frame type: % x", p)
	}
	id, i, ok := readInt(p, i)
	if !ok {
		return 0, false, fmt.Errorf("reply without a call id: % x", p)
	}
	switch kind {
	case 1: // RESULT
		v, _, ok := readInt(p, i)
		a, b := args(uint64(id))
		return uint64(id), ok && v == a*b, nil
	case 2: // ERROR
		c.lastErr = fmt.Sprintf("% x", p)
		return uint64(id), false, nil
	case 9: // GOAWAY
		return 0, false, fmt.Errorf("server sent GOAWAY: %q", p)
	}
	return 0, false, fmt.Errorf("unexpected frame type %d", kind)
}

func handshake(conn net.Conn, r *bufio.Reader) error {
	if _, err := conn.Write(preface); err != nil {
		return err
	}
	var got [8]byte
	if _, err := io.ReadFull(r, got[:]); err != nil {
		return fmt.Errorf("reading the server's preface: %w", err)
	}
	if string(got[:5]) != string(preface[:5]) {
		return fmt.Errorf("not an rpcd native server: preface % x", got)
	}
	return nil
}

// ---- phases, CPU, percentiles (the anchors' go/bench, restated so this
// module needs nothing outside the repository)

const (
	warmupPhase int32 = iota
	measurePhase
	stopPhase
)

const clkTck = 100.0 // USER_HZ

// cpuSeconds is utime+stime of a whole process from /proc/PID/stat (pid 0 =
// self), or -1.
func cpuSeconds(pid int) float64 {
	path := "/proc/self/stat"
	if pid > 0 {
		path = "/proc/" + strconv.Itoa(pid) + "/stat"
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return -1
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return -1
	}
	u, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return (u + st) / clkTck
}

type result struct {
	Case      string   `json:"case"`
	Unit      string   `json:"unit"`
	Calls     int64    `json:"calls"`
	Secs      float64  `json:"secs"`
	Rate      float64  `json:"rate"`
	P50us     *float64 `json:"p50_us"`
	P99us     *float64 `json:"p99_us"`
	MeanUs    *float64 `json:"mean_us"`
	Errors    int64    `json:"errors"`
	ServerCPU *float64 `json:"server_cpu_s"`
	ClientCPU float64  `json:"client_cpu_s"`
	Conns     int      `json:"conns"`
	InFlight  int      `json:"inflight"`
	Procs     int      `json:"procs"`
	Client    string   `json:"client"`
	Note      string   `json:"note,omitempty"`
}

type run struct {
	phase     atomic.Int32
	started   atomic.Int64
	n         int64
	serverPID int
	done      chan struct{}
	once      sync.Once
	t0        time.Time
	srv0      float64
	cli0      float64
	mu        sync.Mutex
	lats      []time.Duration
	errs      atomic.Int64
	errText   atomic.Value
}

func (r *run) admit() (measured, ok bool) {
	switch r.phase.Load() {
	case warmupPhase:
		return false, true
	case measurePhase:
		if r.started.Add(1) > r.n {
			r.stop()
			return false, false
		}
		return true, true
	}
	return false, false
}

func (r *run) stop() {
	r.once.Do(func() { r.phase.Store(stopPhase); close(r.done) })
}

func (r *run) window(warmup, dur time.Duration) {
	time.Sleep(warmup)
	r.srv0 = -1
	if r.serverPID > 0 {
		r.srv0 = cpuSeconds(r.serverPID)
	}
	r.cli0 = cpuSeconds(0)
	r.t0 = time.Now()
	r.phase.Store(measurePhase)
	select {
	case <-time.After(dur):
	case <-r.done:
	}
	r.stop()
}

func pct(sorted []time.Duration, p float64) *float64 {
	if len(sorted) == 0 {
		return nil
	}
	i := int(p*float64(len(sorted))+0.999999) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	v := float64(sorted[i].Nanoseconds()) / 1e3
	return &v
}

func (r *run) finish(res *result) *result {
	el := time.Since(r.t0).Seconds()
	if r.serverPID > 0 && r.srv0 >= 0 {
		v := cpuSeconds(r.serverPID) - r.srv0
		res.ServerCPU = &v
	}
	res.ClientCPU = cpuSeconds(0) - r.cli0
	sort.Slice(r.lats, func(i, j int) bool { return r.lats[i] < r.lats[j] })
	res.Calls = int64(len(r.lats))
	res.Secs = el
	if el > 0 {
		res.Rate = float64(res.Calls) / el
	}
	res.P50us = pct(r.lats, 0.50)
	res.P99us = pct(r.lats, 0.99)
	if len(r.lats) > 0 {
		var sum time.Duration
		for _, l := range r.lats {
			sum += l
		}
		m := float64(sum.Nanoseconds()) / float64(len(r.lats)) / 1e3
		res.MeanUs = &m
	}
	res.Errors = r.errs.Load()
	if t, ok := r.errText.Load().(string); ok {
		res.Note = t
	}
	res.Procs = 1
	return res
}

// ---- the pipelined loop

const ringSize = 1 << 16

func pipeline(conn net.Conn, c *codec, inflight int, flushEach bool, r *run) {
	br := bufio.NewReaderSize(conn, 64<<10)
	ring := make([]int64, ringSize)
	lats := make([]time.Duration, 0, 1<<16)
	defer func() {
		r.mu.Lock()
		r.lats = append(r.lats, lats...)
		r.mu.Unlock()
	}()
	fail := func(outstanding int, err error) {
		r.errs.Add(int64(outstanding) + 1)
		r.errText.Store(err.Error())
		r.stop()
	}
	if err := handshake(conn, br); err != nil {
		fail(0, err)
		return
	}
	var seq uint64 = 1
	outstanding := 0
	stopping := false
	send := func(k int) error {
		c.out = c.out[:0]
		for i := 0; i < k && !stopping; i++ {
			measured, ok := r.admit()
			if !ok {
				stopping = true
				break
			}
			t := time.Now().UnixNano()
			if !measured {
				t = -t
			}
			ring[seq&(ringSize-1)] = t
			c.encode(seq)
			seq++
			outstanding++
			if flushEach {
				if _, err := conn.Write(c.out); err != nil {
					return err
				}
				c.out = c.out[:0]
			}
		}
		if len(c.out) > 0 {
			_, err := conn.Write(c.out)
			return err
		}
		return nil
	}
	if err := send(inflight); err != nil {
		fail(outstanding, err)
		return
	}
	for outstanding > 0 {
		k := 0
		for {
			s, ok, err := c.decode(br)
			if err != nil {
				fail(outstanding, err)
				return
			}
			now := time.Now().UnixNano()
			if !ok {
				r.errs.Add(1)
				if c.lastErr != "" {
					r.errText.Store("error reply: " + c.lastErr)
				}
			} else if t := ring[s&(ringSize-1)]; t > 0 {
				lats = append(lats, time.Duration(now-t))
			}
			outstanding--
			k++
			if br.Buffered() == 0 {
				break
			}
		}
		if err := send(k); err != nil {
			fail(outstanding, err)
			return
		}
	}
}

func check(addr, method string) int {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		fmt.Println("FAIL dial:", err)
		return 1
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	if err := handshake(conn, br); err != nil {
		fmt.Println("FAIL", err)
		return 1
	}
	c := &codec{method: method}
	c.encode(56)
	if _, err := conn.Write(c.out); err != nil {
		fmt.Println("FAIL write:", err)
		return 1
	}
	id, ok, err := c.decode(br)
	if err != nil || !ok || id != 56 {
		fmt.Println("FAIL", id, ok, err, c.lastErr)
		return 1
	}
	fmt.Println("PASS")
	return 0
}

func main() {
	addr := flag.String("addr", "127.0.0.1:1234", "rpcd address")
	method := flag.String("method", "Arith.Multiply", "method taking {A, B int} and answering A*B")
	conns := flag.Int("conns", 1, "connections")
	inflight := flag.Int("inflight", 64, "calls outstanding per connection")
	flushEach := flag.Bool("flush-each", false, "one write syscall per call instead of one per burst")
	dur := flag.Duration("dur", 3*time.Second, "measured window")
	warmup := flag.Duration("warmup", 500*time.Millisecond, "unmeasured warmup")
	n := flag.Int64("n", 10000000, "cap on measured calls")
	pid := flag.Int("server-pid", 0, "server PID for CPU accounting (0 = none)")
	name := flag.String("case", "", "case label")
	doCheck := flag.Bool("check", false, "make one call, print PASS or FAIL")
	flag.Parse()
	if *doCheck {
		os.Exit(check(*addr, *method))
	}
	if *name == "" {
		*name = fmt.Sprintf("rpcd native go %dx%d", *conns, *inflight)
	}
	limit := *warmup + *dur + 20*time.Second
	go func() {
		time.Sleep(limit)
		fmt.Fprintf(os.Stderr, "watchdog: client exceeded %v, exiting\n", limit)
		os.Exit(3)
	}()
	r := &run{n: *n, serverPID: *pid, done: make(chan struct{})}
	var wg sync.WaitGroup
	for i := 0; i < *conns; i++ {
		conn, err := net.Dial("tcp", *addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "dial:", err)
			os.Exit(1)
		}
		c := &codec{method: *method}
		wg.Add(1)
		go func() { defer wg.Done(); pipeline(conn, c, *inflight, *flushEach, r); conn.Close() }()
	}
	r.window(*warmup, *dur)
	wg.Wait()
	res := r.finish(&result{Case: *name, Unit: "calls", Conns: *conns,
		InFlight: *conns * *inflight, Client: "go nativeload"})
	b, _ := json.Marshal(res)
	fmt.Println(string(b))
	p50, p99 := -1.0, -1.0
	if res.P50us != nil {
		p50, p99 = *res.P50us, *res.P99us
	}
	fmt.Fprintf(os.Stderr, "%s: %d calls in %.2fs = %.0f/s p50 %.0fus p99 %.0fus errors %d\n",
		res.Case, res.Calls, res.Secs, res.Rate, p50, p99, res.Errors)
	if res.Errors > 0 {
		os.Exit(2)
	}
}
