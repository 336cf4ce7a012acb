// Command arithserver is a plain Go net/rpc server for rpcd's client tests:
// rpc.ServeConn (gob over TCP) on one port and rpc.HandleHTTP (gob after
// CONNECT /_goRPC_) on another, both on 127.0.0.1 port 0. It prints
//
//	gob 127.0.0.1:PORT
//	http 127.0.0.1:PORT
//
// and serves until killed.
package main

import (
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/rpc"
	"os"
	"time"
)

type Args struct{ A, B int }

type Result struct{ Num, Ans int }

type Arith int

func (t *Arith) Multiply(args *Args, reply *int) error {
	*reply = args.A * args.B
	return nil
}

func (t *Arith) Divide(args *Args, reply *Result) error {
	if args.B == 0 {
		return errors.New("divide by zero")
	}
	*reply = Result{Num: args.A / args.B, Ans: args.A % args.B}
	return nil
}

// Sleep answers after ms milliseconds, with ms.
func (t *Arith) Sleep(ms int, reply *int) error {
	time.Sleep(time.Duration(ms) * time.Millisecond)
	*reply = ms
	return nil
}

// Set takes a key and a value, as seed 001's KVStoreService.Set.
func (t *Arith) Set(kv [2]string, reply *struct{}) error {
	return nil
}

func listen() net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	return ln
}

func main() {
	if err := rpc.Register(new(Arith)); err != nil {
		log.Fatal(err)
	}
	gobLn, httpLn := listen(), listen()
	rpc.HandleHTTP()
	fmt.Printf("gob %s\nhttp %s\n", gobLn.Addr(), httpLn.Addr())
	os.Stdout.Sync()
	go rpc.Accept(gobLn)
	log.Fatal(http.Serve(httpLn, nil))
}
