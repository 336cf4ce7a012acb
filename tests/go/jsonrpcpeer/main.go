// Command jsonrpcpeer is a Go net/rpc/jsonrpc client for rpcd's tests.
//
// It speaks through Go's own jsonrpc client codec on stdin (responses in)
// and stdout (requests out), makes the calls named on the command line one
// after the other, and reports each outcome as one JSON line on stderr:
// {"reply": <the decoded reply>, "error": "<call error or empty>"}.
//
// Usage: jsonrpcpeer CALL...  where CALL is one of
//
//	add    ServiceA.Add with {X:10, Y:50}, reply into an int
//	empty  ServiceA.Nothing with {X:1, Y:2}, reply into a struct{}
//	any    ServiceA.Echo with "hi", reply into an any
package main

import (
	"encoding/json"
	"io"
	"net/rpc"
	"net/rpc/jsonrpc"
	"os"
)

type stdio struct {
	io.Reader
	io.Writer
}

func (stdio) Close() error { return nil }

type Args struct{ X, Y int }

func main() {
	client := rpc.NewClientWithCodec(jsonrpc.NewClientCodec(stdio{os.Stdin, os.Stdout}))
	out := json.NewEncoder(os.Stderr)
	for _, call := range os.Args[1:] {
		var reply any
		var err error
		switch call {
		case "add":
			var n int
			err = client.Call("ServiceA.Add", Args{10, 50}, &n)
			reply = n
		case "empty":
			var s struct{}
			err = client.Call("ServiceA.Nothing", Args{1, 2}, &s)
			reply = s
		case "any":
			err = client.Call("ServiceA.Echo", "hi", &reply)
		default:
			os.Exit(2)
		}
		text := ""
		if err != nil {
			text = err.Error()
		}
		out.Encode(map[string]any{"reply": reply, "error": text})
	}
}
