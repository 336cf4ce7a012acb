// Seed 002, section 1: the HTTP client (GolangDocs/src/rpc/http_method/client/client.go),
// verbatim (seeds/002_37007805ed9ca7c3.txt), dedented.
// GolangDocs/src/rpc/http_method/client/client.go
// Changed: the port is the variable seedPort (see there); nothing else.
package main

import (
    "fmt"
    "log"
    "net"
    "net/rpc"
)

/*
定义一个serviceA 给其他client调用
*/
// 定义参数
type Args struct {
    X, Y int
}

// Changed from the seed: the port, 9000, is this variable, so that the tests can
// run the program with a port the OS picked (set at start from RPCD_SEED_PORT by
// the file tests/test_go_e2e.py builds beside this one, SEED_PORT_GO).
var seedPort = "9000"

func main() {
    // 建立HTTP连接
    client, err := rpc.DialHTTP("tcp", "127.0.0.1:"+seedPort)

    // 同步调用
    args := &Args{10, 20}
    var reply int
    err = client.Call("ServiceA.Add", args, &reply)
    if err != nil {
        log.Fatal("ServiceA.Add error:", err)
    }
    fmt.Printf("ServiceA.Add: %d+%d=%d\n", args.X, args.Y, reply)

    // 异步调用
    var reply2 int
    divCall := client.Go("ServiceA.Add", args, &reply2, nil)
    replyCall := <-divCall.Done // 接收调用结果
    fmt.Println(replyCall.Error)
    fmt.Println(reply2)
}

// Added: the seed imports "net" without using it, which Go refuses to
// compile; this keeps the import list verbatim.
var _ net.Conn
