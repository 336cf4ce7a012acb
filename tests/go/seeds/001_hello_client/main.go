// Seed 001, section 4.3.1: doClientWork (an asynchronous HelloService.Hello),
// verbatim (seeds/001_ac5b4f4fd3df05ca.txt).
// Added: the package clause, the imports, and main(), which dials the seed's
// server address (localhost:1234) and calls doClientWork.
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

// Added.
func main() {
	client, err := rpc.Dial("tcp", "localhost:1234")
	if err != nil {
		log.Fatal(err)
	}
	doClientWork(client)
}
