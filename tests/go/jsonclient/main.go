// Command jsonclient calls a net/rpc/jsonrpc server (rpcd) with Go's stock
// client, jsonrpc.Dial, and prints one line per check for rpcd's tests:
//
//	sync 60                 ServiceA.Add({10, 50}) with client.Call
//	async 56                Arith.Multiply({7, 8}) with client.Go
//	concurrent 100/100      100 Cal.Square calls from 100 goroutines at once
//	set ok                  KVStoreService.Set into a struct{} reply (no result)
//	unknown <Go's error>    Nope.Method, then ServiceA.Nope
//	after 3                 ServiceA.Add({1, 2}): the connection still works
//
// Usage: jsonclient HOST:PORT.  Exits 1 on any unexpected error.
package main

import (
	"fmt"
	"log"
	"net/rpc/jsonrpc"
	"os"
	"sync"
)

type Args struct{ X, Y int }

type MulArgs struct{ A, B int }

type Result struct{ Num, Ans int }

func main() {
	client, err := jsonrpc.Dial("tcp", os.Args[1])
	if err != nil {
		log.Fatal("dial: ", err)
	}
	defer client.Close()

	var sum int
	if err := client.Call("ServiceA.Add", &Args{10, 50}, &sum); err != nil {
		log.Fatal("sync: ", err)
	}
	fmt.Printf("sync %d\n", sum)

	var product int
	call := client.Go("Arith.Multiply", &MulArgs{7, 8}, &product, nil)
	<-call.Done
	if call.Error != nil {
		log.Fatal("async: ", call.Error)
	}
	fmt.Printf("async %d\n", product)

	var wg sync.WaitGroup
	answers := make([]int, 100)
	errs := make([]error, 100)
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var r Result
			errs[i] = client.Call("Cal.Square", i, &r)
			answers[i] = r.Ans
		}(i)
	}
	wg.Wait()
	good := 0
	for i := range answers {
		if errs[i] == nil && answers[i] == i*i {
			good++
		} else if errs[i] != nil {
			fmt.Fprintln(os.Stderr, "concurrent:", errs[i])
		}
	}
	fmt.Printf("concurrent %d/100\n", good)

	var empty struct{}
	if err := client.Call("KVStoreService.Set", [2]string{"go", "json"}, &empty); err != nil {
		log.Fatal("set: ", err)
	}
	fmt.Println("set ok")

	var x int
	fmt.Printf("unknown %v\n", client.Call("Nope.Method", 1, &x))
	fmt.Printf("unknown %v\n", client.Call("ServiceA.Nope", &Args{1, 2}, &x))

	if err := client.Call("ServiceA.Add", &Args{1, 2}, &sum); err != nil {
		log.Fatal("after: ", err)
	}
	fmt.Printf("after %d\n", sum)
}
