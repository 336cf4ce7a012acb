// gobroll: Go net/rpc (gob) callers for tests/test_rolling_e2e.py and
// benchmarks/rolling_restart.py.
//
// Each of -callers goroutines holds one connection, to the addresses in
// turn, and calls Arith.Multiply and Sleep.Sleep alternately until its
// standard input closes; then it prints one JSON line of counts.
//
// A call that fails with rpc.ErrShutdown or an EOF was not run: rpcd answers
// every call it has read before it closes a draining gob connection (gob has
// no GOAWAY), so the caller redials the next address and sends it again,
// counted in "retried". So was a call whose request could not be written
// (broken pipe, connection reset): the daemon had closed the connection
// before the request's last byte reached it. net/rpc keeps a write error
// (its bufio.Writer's) and returns it for every later call until its reader
// sees the close, so without the redial one race would fail many calls.
// Any other error counts in "failed".
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/rpc"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type Args struct{ A, B int }

func notRun(err error) bool {
	return errors.Is(err, rpc.ErrShutdown) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNRESET) || strings.Contains(err.Error(), "connection reset") ||
		strings.Contains(err.Error(), "broken pipe")
}

func main() {
	network := flag.String("network", "tcp", "tcp or unix")
	addrs := flag.String("addrs", "", "comma-separated host:port list (or socket paths)")
	callers := flag.Int("callers", 8, "goroutines, one connection each")
	flag.Parse()
	list := strings.Split(*addrs, ",")
	var ok, failed, retried, redials int64
	var mu sync.Mutex
	errs := map[string]int{}
	var stop atomic.Bool
	go func() { io.Copy(io.Discard, os.Stdin); stop.Store(true) }()
	var wg sync.WaitGroup
	for c := 0; c < *callers; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			next := c
			var client *rpc.Client
			dial := func() {
				for !stop.Load() {
					addr := list[next%len(list)]
					next++
					cl, err := rpc.Dial(*network, addr)
					if err == nil {
						client = cl
						atomic.AddInt64(&redials, 1)
						return
					}
					time.Sleep(20 * time.Millisecond) // a daemon restarting: try the next
				}
			}
			dial()
			for i := 0; !stop.Load(); i++ {
				var err error
				for attempt := 0; attempt < 5; attempt++ {
					if i%2 == 1 {
						var reply int
						err = client.Call("Arith.Multiply", &Args{c, i}, &reply)
						if err == nil && reply != c*i {
							err = fmt.Errorf("wrong answer %d", reply)
						}
					} else {
						var reply float64
						err = client.Call("Sleep.Sleep", 0.05, &reply)
					}
					if err == nil || !notRun(err) {
						break
					}
					atomic.AddInt64(&retried, 1)
					client.Close()
					client = nil
					dial()
					if client == nil {
						break
					}
				}
				if err == nil {
					atomic.AddInt64(&ok, 1)
				} else if client == nil && stop.Load() {
					break // stopping while redialling: not a failure of the call
				} else {
					atomic.AddInt64(&failed, 1)
					mu.Lock()
					errs[err.Error()]++
					mu.Unlock()
				}
			}
			if client != nil {
				client.Close()
			}
		}(c)
	}
	wg.Wait()
	out, _ := json.Marshal(map[string]interface{}{"ok": ok, "failed": failed, "retried": retried,
		"connections": redials, "errors": errs})
	fmt.Println(string(out))
}
