// Seed 001, section 4.3.3 (reverse RPC): the caller, which listens and calls
// HelloService.Hello over the connection the service dials in on
// (seeds/001_ac5b4f4fd3df05ca.txt).
// Added: the package clause and the imports.
// Changed: the port is the variable seedPort (see there), and the listening
// address is printed; doClientWork's "err =" is "err :=" (the seed's does not
// compile: err is not declared there); nothing else.
package main

import (
	"fmt"
	"log"
	"net"
	"net/rpc"
)

// Changed from the seed: the port, 1234, is this variable, so that the tests can
// listen on a port the OS picks (RPCD_SEED_PORT=0, read by the file
// tests/test_go_e2e.py builds beside this one, SEED_PORT_GO).
var seedPort = "1234"

func main() {
listener, err := net.Listen("tcp", ":"+seedPort)
if err != nil {
log.Fatal("ListenTCP error:", err)
}
fmt.Println("listening on", listener.Addr()) // Added: the port for the tests.
clientChan := make(chan *rpc.Client)
go func() {
for {
conn, err := listener.Accept()
if err != nil {
log.Fatal("Accept error:", err)
}
clientChan <- rpc.NewClient(conn)
}
}()
doClientWork(clientChan)
}

func doClientWork(clientChan <-chan *rpc.Client) {
client := <-clientChan
defer client.Close()
var reply string
err := client.Call("HelloService.Hello", "hello", &reply)
if err != nil {
log.Fatal(err)
}
fmt.Println(reply)
}
