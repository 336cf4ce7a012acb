// Seed 004, section 2.1: the client's call of Arith.Multiply, verbatim
// (seeds/004_34d058f88c2d2e73.txt).
// Added: the package clause, the imports, Args (from the seed's server code
// just above it), main() around the four lines, and the last line, which
// prints the reply (the seed prints nothing).
// Changed: the port is the variable seedPort (see there); nothing else.
package main

import (
	"fmt"
	"net/rpc"
)

type Args struct {
    A, B int
}

// Changed from the seed: the port, 8080, is this variable, so that the tests can
// run the program with a port the OS picked (set at start from RPCD_SEED_PORT by
// the file tests/test_go_e2e.py builds beside this one, SEED_PORT_GO).
var seedPort = "8080"

func main() {
client, _ := rpc.Dial("tcp", "localhost:"+seedPort)
args := &Args{7, 8}
var reply int
client.Call("Arith.Multiply", args, &reply)
fmt.Println("Arith.Multiply:", reply) // Added.
}
