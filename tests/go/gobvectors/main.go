// Command gobvectors produces gob captures from Go's own encoder and
// net/rpc, and decodes what rpcd's Python codec encodes, for rpcd's tests.
//
//	gobvectors capture   print hex of a net/rpc session (client->server, server->client)
//	gobvectors encode    print hex of a gob stream of sample values
//	gobvectors decode    read a gob stream of sample values on stdin, print them
//	gobvectors serve     run a net/rpc server on stdin/stdout
//	gobvectors client    run a net/rpc client on stdin/stdout, report on stderr
package main

import (
	"bytes"
	"encoding/gob"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"os"
	"reflect"
	"sync"
)

type Args struct{ A, B int }

type Result struct{ Num, Ans int }

type Inner struct {
	Label   string
	Weights []float64
}

type Rich struct {
	Name    string
	Count   uint
	Delta   int64
	Ratio   float64
	Small   float32
	Z       complex128
	OK      bool
	Blob    []byte
	Tags    []string
	Scores  map[string]int
	Inner   Inner
	Inners  []Inner
	ByName  map[string]Inner
	Grid    [2][3]int
	Ptr     *Inner
	Nothing *Inner
	Zero    int
	Empty   string
}

type Tree struct {
	Val  int
	Kids []Tree
}

type Node struct {
	Val  int
	Next *Node
}

type Empty struct{}

func sampleRich() Rich {
	return Rich{
		Name:   "gopher",
		Count:  1 << 40,
		Delta:  -129,
		Ratio:  17.0,
		Small:  0.5,
		Z:      complex(1.5, -2),
		OK:     true,
		Blob:   []byte{0, 1, 2, 255},
		Tags:   []string{"a", "", "ü"},
		Scores: map[string]int{"x": 1, "y": -1},
		Inner:  Inner{Label: "in", Weights: []float64{0.25, -1e300}},
		Inners: []Inner{{}, {Label: "second"}},
		ByName: map[string]Inner{"k": {Label: "v"}},
		Grid:   [2][3]int{{1, 2, 3}, {4, 5, 6}},
		Ptr:    &Inner{Label: "pointed"},
	}
}

func sampleTree() Tree {
	return Tree{Val: 1, Kids: []Tree{{Val: 2}, {Val: 3, Kids: []Tree{{Val: 4}}}}}
}

func sampleNode() Node {
	return Node{Val: 1, Next: &Node{Val: 2, Next: &Node{Val: 3}}}
}

// Arith is the net/rpc service of the captures.
type Arith int

func (t *Arith) Multiply(args *Args, reply *int) error {
	*reply = args.A * args.B
	return nil
}

func (t *Arith) Result(args *Args, reply *Result) error {
	*reply = Result{Num: args.A, Ans: args.A * args.B}
	return nil
}

func (t *Arith) Divide(args *Args, reply *Result) error {
	if args.B == 0 {
		return errors.New("divide by zero")
	}
	*reply = Result{Num: args.A / args.B, Ans: args.A % args.B}
	return nil
}

func (t *Arith) Echo(args *Rich, reply *Rich) error {
	*reply = *args
	return nil
}

// tee records what one side writes.
type tee struct {
	net.Conn
	mu  *sync.Mutex
	out *bytes.Buffer
}

func (t tee) Write(p []byte) (int, error) {
	t.mu.Lock()
	t.out.Write(p)
	t.mu.Unlock()
	return t.Conn.Write(p)
}

func capture() {
	server := rpc.NewServer()
	if err := server.Register(new(Arith)); err != nil {
		panic(err)
	}
	cconn, sconn := net.Pipe()
	var mu sync.Mutex
	var c2s, s2c bytes.Buffer
	go server.ServeConn(tee{sconn, &mu, &s2c})
	client := rpc.NewClient(tee{cconn, &mu, &c2s})

	var product int
	var result Result
	var rich Rich
	fmt.Println("call Arith.Multiply", client.Call("Arith.Multiply", &Args{7, 8}, &product), product)
	fmt.Println("call Arith.Result", client.Call("Arith.Result", &Args{6, 7}, &result), result)
	fmt.Println("call Arith.Divide", client.Call("Arith.Divide", &Args{1, 0}, &result))
	fmt.Println("call Arith.Nope", client.Call("Arith.Nope", &Args{1, 2}, &result))
	fmt.Println("call Nope.Multiply", client.Call("Nope.Multiply", &Args{1, 2}, &result))
	fmt.Println("call Bad", client.Call("Bad", &Args{1, 2}, &result))
	fmt.Println("call Arith.Echo", client.Call("Arith.Echo", sampleRich(), &rich))
	client.Close()
	mu.Lock()
	defer mu.Unlock()
	fmt.Println("c2s", hex.EncodeToString(c2s.Bytes()))
	fmt.Println("s2c", hex.EncodeToString(s2c.Bytes()))
}

func encodeSamples() {
	var buf bytes.Buffer
	enc := gob.NewEncoder(&buf)
	for _, v := range []any{
		Args{7, 8},
		sampleRich(),
		sampleTree(),
		sampleNode(),
		Empty{},
		map[string]Args{"one": {1, 0}, "zero": {}},
		Rich{},
		[]int{1, -1, 1000},
	} {
		if err := enc.Encode(v); err != nil {
			panic(err)
		}
	}
	fmt.Println(hex.EncodeToString(buf.Bytes()))
}

func decodeSamples() {
	dec := gob.NewDecoder(os.Stdin)
	var args Args
	var rich Rich
	var tree Tree
	var node Node
	var empty Empty
	var byName map[string]Args
	var ints []int
	for _, p := range []any{&args, &rich, &tree, &node, &empty, &byName, &ints} {
		if err := dec.Decode(p); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
	}
	fmt.Printf("%#v\n", args)
	ptr, nothing := rich.Ptr, rich.Nothing
	rich.Ptr, rich.Nothing = nil, nil
	fmt.Printf("%#v\n", rich)
	fmt.Printf("Ptr %#v Nothing %v\n", *ptr, nothing == nil)
	fmt.Printf("%#v\n", tree)
	fmt.Printf("Node %d %d %d %v\n", node.Val, node.Next.Val, node.Next.Next.Val, node.Next.Next.Next == nil)
	fmt.Printf("%#v\n", empty)
	fmt.Printf("%#v\n", byName)
	fmt.Printf("%#v\n", ints)
}

// stdio is a connection made of this process's stdin and stdout.
type stdio struct{}

func (stdio) Read(p []byte) (int, error)  { return os.Stdin.Read(p) }
func (stdio) Write(p []byte) (int, error) { return os.Stdout.Write(p) }
func (stdio) Close() error                { return os.Stdout.Close() }

func serve() {
	server := rpc.NewServer()
	if err := server.Register(new(Arith)); err != nil {
		panic(err)
	}
	server.ServeConn(stdio{})
}

// client calls the Python server on the other end of stdin/stdout and
// reports on stderr.
func client() {
	c := rpc.NewClient(stdio{})
	report := func(format string, a ...any) { fmt.Fprintf(os.Stderr, format+"\n", a...) }
	var product int
	err := c.Call("Arith.Multiply", &Args{7, 8}, &product)
	report("Multiply %d %v", product, err)
	sent := sampleRich()
	var got Rich
	err = c.Call("Echo.Rich", &sent, &got)
	report("EchoRich equal=%v err=%v", reflect.DeepEqual(sent, got), err)
	if !reflect.DeepEqual(sent, got) {
		report("sent %#v\ngot  %#v", sent, got)
	}
	tree := sampleTree()
	var gotTree Tree
	err = c.Call("Echo.Tree", &tree, &gotTree)
	report("EchoTree equal=%v err=%v", reflect.DeepEqual(tree, gotTree), err)
	err = c.Call("Arith.Nope", &Args{1, 2}, &product)
	report("Nope %v", err)
	c.Close()
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gobvectors capture|encode|decode|serve|client")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "capture":
		capture()
	case "encode":
		encodeSamples()
	case "decode":
		decodeSamples()
	case "serve":
		serve()
	case "client":
		client()
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}
