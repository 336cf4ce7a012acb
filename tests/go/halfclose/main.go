// Command halfclose sends one Arith.Multiply({6, 7}) call with Go's stock
// net/rpc clients, shuts down its write side (CloseWrite) before the reply
// comes, and prints the reply, for each codec:
//
//	gob 42
//	jsonrpc 42
//
// as Go's own rpc.ServeConn and jsonrpc.ServeConn answer such a client.
// Usage: halfclose HOST:PORT.  Exits 1 on any error.
package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/rpc"
	"net/rpc/jsonrpc"
	"os"
)

type MulArgs struct{ A, B int }

func call(name string, dial func(io.ReadWriteCloser) *rpc.Client) {
	conn, err := net.Dial("tcp", os.Args[1])
	if err != nil {
		log.Fatal(name, " dial: ", err)
	}
	client := dial(conn)
	var product int
	done := client.Go("Arith.Multiply", &MulArgs{6, 7}, &product, nil)
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		log.Fatal(name, " CloseWrite: ", err)
	}
	<-done.Done
	if done.Error != nil {
		log.Fatal(name, ": ", done.Error)
	}
	fmt.Printf("%s %d\n", name, product)
	client.Close()
}

func main() {
	call("gob", rpc.NewClient)
	call("jsonrpc", jsonrpc.NewClient)
}
