// Command jsonserver is a stock Go net/rpc server speaking jsonrpc
// (jsonrpc.ServeConn), for rpcd's client tests.  It listens on
// 127.0.0.1:0, prints "listening HOST:PORT", and serves each connection
// until the process is killed.
//
//	ServiceA.Add(Args{X, Y}) -> X + Y           (seed 002)
//	ServiceA.Fail(Args)      -> error "no luck: X"
//	ServiceA.Pair(Args)      -> Pair{Sum, Product, Tag}
package main

import (
	"errors"
	"fmt"
	"log"
	"net"
	"net/rpc"
	"net/rpc/jsonrpc"
	"os"
)

type Args struct{ X, Y int }

type Pair struct {
	Sum, Product int
	Tag          string
}

type ServiceA struct{}

func (s *ServiceA) Add(args *Args, reply *int) error {
	*reply = args.X + args.Y
	return nil
}

func (s *ServiceA) Fail(args *Args, reply *int) error {
	return errors.New(fmt.Sprintf("no luck: %d", args.X))
}

func (s *ServiceA) Pair(args *Args, reply *Pair) error {
	*reply = Pair{args.X + args.Y, args.X * args.Y, "<go>"}
	return nil
}

func main() {
	if err := rpc.Register(new(ServiceA)); err != nil {
		log.Fatal(err)
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening %s\n", listener.Addr())
	os.Stdout.Sync()
	for {
		conn, err := listener.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go jsonrpc.ServeConn(conn)
	}
}
