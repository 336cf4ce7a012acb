// Seed 001, section 4.3.1: doClientWork (an asynchronous HelloService.Hello),
// verbatim (seeds/001_ac5b4f4fd3df05ca.txt).
// Added: the package clause, the imports, and main(), which dials the seed's
// server address (localhost:1234) and calls doClientWork.
// Changed: the port is the variable seedPort (see there); nothing else.
package main

import (
	"fmt"
	"log"
	"net/rpc"
)

func doClientWork(client *rpc.Client) {
helloCall := client.Go("HelloService.Hello", "hello", new(string), nil)
// do some thing
helloCall = <-helloCall.Done
if err := helloCall.Error; err != nil {
log.Fatal(err)
}
args := helloCall.Args.(string)
reply := helloCall.Reply.(string)
fmt.Println(args, reply)
}

// Changed from the seed: the port, 1234, is this variable, so that the tests can
// run the program with a port the OS picked (set at start from RPCD_SEED_PORT by
// the file tests/test_go_e2e.py builds beside this one, SEED_PORT_GO).
var seedPort = "1234"

// Added.
func main() {
	client, err := rpc.Dial("tcp", "localhost:"+seedPort)
	if err != nil {
		log.Fatal(err)
	}
	doClientWork(client)
}
