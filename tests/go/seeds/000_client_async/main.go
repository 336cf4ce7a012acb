// Seed 000, section 4.3: the asynchronous client. Its package, imports and
// Result are section 4.2's client/main.go; main() is section 4.3's, verbatim.
// Nothing added.
// Changed: the port is the variable seedPort (see there); nothing else.
package main
import (
"log"
"net/rpc"
)
type Result struct {
Num, Ans int
}
// Changed from the seed: the port, 1234, is this variable, so that the tests can
// run the program with a port the OS picked (set at start from RPCD_SEED_PORT by
// the file tests/test_go_e2e.py builds beside this one, SEED_PORT_GO).
var seedPort = "1234"

func main() {
client, _ := rpc.DialHTTP("tcp", "localhost:"+seedPort)
var result Result
asyncCall := client.Go("Cal.Square", 12, &result, nil)
log.Printf("%d^2 = %d", result.Num, result.Ans)
<-asyncCall.Done
log.Printf("%d^2 = %d", result.Num, result.Ans)
}
