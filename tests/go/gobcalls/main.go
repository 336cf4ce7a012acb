// Command gobcalls calls rpcd (or any net/rpc server with rpcd's demo and
// test services) with Go's own net/rpc client, for rpcd's end-to-end tests.
// Each mode prints one line per check; the tests assert on them.
//
//	gobcalls -addr 127.0.0.1:PORT basic        sync and async calls, unknown names, the connection after them
//	gobcalls -addr 127.0.0.1:PORT concurrent   200 calls in flight on one connection (client.Go in goroutines)
//	gobcalls -addr 127.0.0.1:PORT kv           Watch beside Set on one client
//	gobcalls -addr 127.0.0.1:PORT login        Login state belongs to one connection
//	gobcalls -addr 127.0.0.1:PORT echo         rich types echoed by Echo.Plain (no hints) and Echo.Rich (hints)
//	gobcalls -addr 127.0.0.1:PORT -http basic  the same over rpc.DialHTTP
package main

import (
	"flag"
	"fmt"
	"log"
	"net/rpc"
	"os"
	"reflect"
	"sync"
)

type Args struct{ A, B int }

type AddArgs struct{ X, Y int }

type Result struct{ Num, Ans int }

type Inner struct {
	Label   string
	Weights []float64
}

type Rich struct {
	Name       string
	Count      uint
	Delta      int64
	Ratio      float64
	Small      float32
	SmallRatio float64
	Z          complex128
	OK         bool
	Blob       []byte
	Tags       []string
	Scores     map[string]int
	Inner      Inner
	Inners     []Inner
	ByName     map[string]Inner
	Grid       [2][3]int
	Ptr        *Inner
	Nothing    *Inner
}

func sampleRich() Rich {
	return Rich{
		Name:       "gopher",
		Count:      1 << 40,
		Delta:      -129,
		Ratio:      17.0,
		Small:      0.5,
		SmallRatio: -0.25,
		Z:          complex(1.5, -2),
		OK:         true,
		Blob:       []byte{0, 1, 2, 255},
		Tags:       []string{"a", "", "ü"},
		Scores:     map[string]int{"x": 1, "y": -1},
		Inner:      Inner{Label: "in", Weights: []float64{0.25, -1e300}},
		Inners:     []Inner{{}, {Label: "second"}},
		ByName:     map[string]Inner{"k": {Label: "v"}},
		Grid:       [2][3]int{{1, 2, 3}, {4, 5, 6}},
		Ptr:        &Inner{Label: "pointed"},
	}
}

var useHTTP = flag.Bool("http", false, "dial with rpc.DialHTTP (CONNECT /_goRPC_)")

func dial(addr string) *rpc.Client {
	var c *rpc.Client
	var err error
	if *useHTTP {
		c, err = rpc.DialHTTP("tcp", addr)
	} else {
		c, err = rpc.Dial("tcp", addr)
	}
	if err != nil {
		log.Fatal("dial: ", err)
	}
	return c
}

func basic(c *rpc.Client) {
	var product int
	err := c.Call("Arith.Multiply", &Args{7, 8}, &product)
	fmt.Printf("sync Arith.Multiply %d %v\n", product, err)
	var result Result
	call := c.Go("Cal.Square", 12, &result, nil)
	<-call.Done
	fmt.Printf("async Cal.Square %d^2 = %d %v\n", result.Num, result.Ans, call.Error)
	var sum int
	err = c.Call("ServiceA.Add", &AddArgs{10, 20}, &sum)
	fmt.Printf("ServiceA.Add %d %v\n", sum, err)
	fmt.Printf("unknown service: %v\n", c.Call("Nope.Multiply", &Args{1, 2}, &product))
	fmt.Printf("unknown method: %v\n", c.Call("Arith.Nope", &Args{1, 2}, &product))
	fmt.Printf("ill-formed: %v\n", c.Call("Bad", &Args{1, 2}, &product))
	fmt.Printf("wrong argument type: %v\n", c.Call("Arith.Multiply", "seven", &product))
	var s string
	fmt.Printf("service error: %v\n", c.Call("KVStoreService.Get", "no-such-key", &s))
	product = 0
	err = c.Call("Arith.Multiply", &Args{6, 7}, &product)
	fmt.Printf("after errors Arith.Multiply %d %v\n", product, err)
}

func concurrent(c *rpc.Client) {
	const n = 200
	var wg sync.WaitGroup
	var mu sync.Mutex
	bad := 0
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var product int
			call := c.Go("Arith.Multiply", &Args{i, 3}, &product, nil)
			<-call.Done
			if call.Error != nil || product != 3*i {
				mu.Lock()
				bad++
				mu.Unlock()
				fmt.Printf("bad reply %d: %d %v\n", i, product, call.Error)
			}
		}(i)
	}
	wg.Wait()
	fmt.Printf("concurrent %d calls, %d bad\n", n, bad)
}

func kv(c *rpc.Client) {
	var key string
	// Requests on one connection are written in order: the Watch is
	// registered before the Set arrives.
	watch := c.Go("KVStoreService.Watch", 30, &key, nil)
	err := c.Call("KVStoreService.Set", [2]string{"abc", "abc-value-kv"}, new(struct{}))
	fmt.Printf("Set %v\n", err)
	<-watch.Done
	fmt.Printf("watch: %s %v\n", key, watch.Error)
	var value string
	err = c.Call("KVStoreService.Get", "abc", &value)
	fmt.Printf("Get %s %v\n", value, err)
	err = c.Call("KVStoreService.Watch", 1, &key)
	fmt.Printf("idle watch: %v\n", err)
}

func login(addr string) {
	one, two := dial(addr), dial(addr)
	var reply string
	fmt.Printf("one Hello before Login: %v\n", one.Call("HelloService.Hello", "a", &reply))
	fmt.Printf("one Login wrong: %v\n", one.Call("HelloService.Login", "user:wrong", &reply))
	fmt.Printf("one Login: %v\n", one.Call("HelloService.Login", "user:password", &reply))
	err := one.Call("HelloService.Hello", "a", &reply)
	fmt.Printf("one Hello: %s %v\n", reply, err)
	fmt.Printf("two Hello: %v\n", two.Call("HelloService.Hello", "b", &reply))
}

func echo(c *rpc.Client) {
	sent := sampleRich()
	for _, method := range []string{"Echo.Plain", "Echo.Rich"} {
		var got Rich
		err := c.Call(method, &sent, &got)
		equal := reflect.DeepEqual(sent, got)
		fmt.Printf("%s rich equal=%v %v\n", method, equal, err)
		if !equal {
			fmt.Printf("sent %#v\ngot  %#v\n", sent, got)
		}
	}
	var text string
	err := c.Call("Echo.Plain", "héllo", &text)
	fmt.Printf("Echo.Plain string %q %v\n", text, err)
	var ints []int
	err = c.Call("Echo.Plain", []int{1, -1, 1 << 40}, &ints)
	fmt.Printf("Echo.Plain ints %v %v\n", ints, err)
	var scores map[string]float64
	err = c.Call("Echo.Plain", map[string]float64{"pi": 3.25}, &scores)
	fmt.Printf("Echo.Plain map %v %v\n", scores, err)
	err = c.Call("Echo.Nothing", 1, new(struct{}))
	fmt.Printf("Echo.Nothing %v\n", err)
	err = c.Call("Echo.Fail", "it broke", &text)
	fmt.Printf("Echo.Fail %v\n", err)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:1234", "server address")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: gobcalls [-addr HOST:PORT] [-http] basic|concurrent|kv|login|echo")
		os.Exit(2)
	}
	mode := flag.Arg(0)
	if mode == "login" {
		login(*addr)
		return
	}
	c := dial(*addr)
	defer c.Close()
	switch mode {
	case "basic":
		basic(c)
	case "concurrent":
		concurrent(c)
	case "kv":
		kv(c)
	case "echo":
		echo(c)
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", mode)
		os.Exit(2)
	}
}
