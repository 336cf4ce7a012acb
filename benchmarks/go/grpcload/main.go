// grpcload: a grpc-go load client for the anchors' anchors.Arith/Multiply,
// so that a gRPC server's unary rate is measured with a client that is not
// itself the bottleneck (grpcio's Python-driven aio client saturates near
// the servers it measures).
//
// It needs no generated code: a raw codec named "proto" sends the request
// bytes as they are (Args{a, b=7}: fields 1 and 2 as varints) and checks
// the reply (Reply{result}: field 1). -inflight goroutines share one
// connection (-conns for more), each keeping one call outstanding; calls
// are counted over -dur after -warmup, and the server's CPU
// (utime+stime from /proc/PID/stat) over the same window. The last stdout
// line is JSON with the anchors' keys (rate, calls, errors, server_cpu_s,
// client_cpu_s). With -stream N it reads one server stream of N messages
// (anchors.Arith/Stream) instead, and counts messages.
//
// Built in GOPATH mode against Debian's grpc-go (see benchmarks/README.md):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o /tmp/grpcload ./grpcload
//	/tmp/grpcload -addr 127.0.0.1:PORT -inflight 64 -dur 3s -server-pid PID
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
)

type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	p := v.(*[]byte)
	*p = append((*p)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

func varint(out []byte, n uint64) []byte {
	for n >= 0x80 {
		out = append(out, byte(n)|0x80)
		n >>= 7
	}
	return append(out, byte(n))
}

// request is Args{a, b: 7}; want is Reply{result: a * 7}.
func request(a uint64) (req, want []byte) {
	req = varint([]byte{0x08}, a)
	req = append(req, 0x10, 7)
	return req, varint([]byte{0x08}, a*7)
}

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
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return -1
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / 100.0
}

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "server address")
	inflight := flag.Int("inflight", 64, "calls in flight per connection")
	conns := flag.Int("conns", 1, "connections")
	dur := flag.Duration("dur", 3*time.Second, "measured time")
	warmup := flag.Duration("warmup", 500*time.Millisecond, "time before measuring")
	pid := flag.Int("server-pid", 0, "the server's pid, for its CPU")
	check := flag.Bool("check", false, "one call: PASS or FAIL")
	stream := flag.Int("stream", 0, "instead of unary calls: one Stream of this many messages")
	flag.Parse()

	var clients []*grpc.ClientConn
	for i := 0; i < *conns; i++ {
		cc, err := grpc.Dial(*addr, grpc.WithInsecure(),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
		if err != nil {
			fmt.Fprintln(os.Stderr, "dial:", err)
			os.Exit(2)
		}
		clients = append(clients, cc)
	}
	call := func(cc *grpc.ClientConn, a uint64) error {
		req, want := request(a)
		var reply []byte
		if err := cc.Invoke(context.Background(), "/anchors.Arith/Multiply", &req, &reply); err != nil {
			return err
		}
		if string(reply) != string(want) {
			return fmt.Errorf("reply %x, want %x", reply, want)
		}
		return nil
	}
	if *check {
		if err := call(clients[0], 6); err != nil {
			fmt.Println("FAIL", err)
			os.Exit(1)
		}
		fmt.Println("PASS")
		return
	}

	if *stream > 0 {
		runStream(clients[0], *stream, *pid)
		return
	}

	var measuring, stopping atomic.Bool
	var calls, errs atomic.Int64
	var lastErr atomic.Value
	var wg sync.WaitGroup
	for _, cc := range clients {
		for i := 0; i < *inflight; i++ {
			wg.Add(1)
			go func(cc *grpc.ClientConn, a uint64) {
				defer wg.Done()
				for !stopping.Load() {
					err := call(cc, a)
					if measuring.Load() {
						if err != nil {
							errs.Add(1)
							lastErr.Store(err.Error())
						} else {
							calls.Add(1)
						}
					}
					a++
				}
			}(cc, uint64(i)*1000003)
		}
	}
	time.Sleep(*warmup)
	srv0, cli0 := cpuSeconds(*pid), cpuSeconds(0)
	t0 := time.Now()
	measuring.Store(true)
	time.Sleep(*dur)
	measuring.Store(false)
	secs := time.Since(t0).Seconds()
	srv1, cli1 := cpuSeconds(*pid), cpuSeconds(0)
	n := calls.Load()
	stopping.Store(true)
	wg.Wait()
	result := map[string]interface{}{
		"case": "go grpc unary", "unit": "call", "calls": n, "secs": secs,
		"rate": float64(n) / secs, "errors": errs.Load(), "client_cpu_s": cli1 - cli0,
		"conns": *conns, "inflight": *inflight, "client": "grpcload (grpc-go)",
		"server_cpu_s": nil,
	}
	if *pid > 0 && srv0 >= 0 {
		result["server_cpu_s"] = srv1 - srv0
	}
	if e := lastErr.Load(); e != nil {
		result["note"] = e
	}
	out, _ := json.Marshal(result)
	fmt.Println(string(out))
}

// runStream reads one anchors.Arith/Stream of n messages (after a warm-up
// stream of 10,000, as the anchors' aiostream client does), checking each
// Reply{result: i}; the server's CPU is counted over the measured stream.
func runStream(cc *grpc.ClientConn, n int, pid int) {
	desc := &grpc.StreamDesc{ServerStreams: true}
	read := func(count int) (int, error) {
		s, err := cc.NewStream(context.Background(), desc, "/anchors.Arith/Stream")
		if err != nil {
			return 0, err
		}
		req := varint([]byte{0x08}, uint64(count))
		if err := s.SendMsg(&req); err != nil {
			return 0, err
		}
		if err := s.CloseSend(); err != nil {
			return 0, err
		}
		got := 0
		var reply []byte
		for {
			if err := s.RecvMsg(&reply); err != nil {
				if err == io.EOF {
					return got, nil
				}
				return got, err
			}
			want := []byte{}
			if got > 0 {
				want = varint([]byte{0x08}, uint64(got))
			}
			if string(reply) != string(want) {
				return got, fmt.Errorf("message %d: %x", got, reply)
			}
			got++
		}
	}
	if _, err := read(10000); err != nil {
		fmt.Fprintln(os.Stderr, "warm-up stream:", err)
		os.Exit(1)
	}
	srv0, cli0 := cpuSeconds(pid), cpuSeconds(0)
	t0 := time.Now()
	got, err := read(n)
	secs := time.Since(t0).Seconds()
	srv1, cli1 := cpuSeconds(pid), cpuSeconds(0)
	errors := 0
	result := map[string]interface{}{
		"case": "go grpc stream", "unit": "msg", "calls": got, "secs": secs,
		"rate": float64(got) / secs, "client_cpu_s": cli1 - cli0,
		"client": "grpcload (grpc-go)", "server_cpu_s": nil,
	}
	if err != nil || got != n {
		errors = 1
		result["note"] = fmt.Sprint(err)
	}
	result["errors"] = errors
	if pid > 0 && srv0 >= 0 {
		result["server_cpu_s"] = srv1 - srv0
	}
	out, _ := json.Marshal(result)
	fmt.Println(string(out))
}
