// Seed 001, section 4.3.2: doClientWork (Watch beside Set), verbatim
// (seeds/001_ac5b4f4fd3df05ca.txt).
// Added: the package clause, the imports, and main(), which dials the seed's
// server address (localhost:1234) and calls doClientWork.
// Changed: the port is the variable seedPort (see there); nothing else.
package main

import (
	"fmt"
	"log"
	"net/rpc"
	"time"
)

func doClientWork(client *rpc.Client) {
go func() {
var keyChanged string
err := client.Call("KVStoreService.Watch", 30, &keyChanged)
if err != nil {
log.Fatal(err)
}
fmt.Println("watch:", keyChanged)
} ()
err := client.Call(
"KVStoreService.Set", [2]string{"abc", "abc-value"},
new(struct{}),
)
if err != nil {
log.Fatal(err)
}
time.Sleep(time.Second*3)
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
