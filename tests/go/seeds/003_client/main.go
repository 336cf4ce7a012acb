// Seed 003: the gRPC client with mutual TLS (section "客户端实现") followed
// by its three streaming calls (section "流式的RPC通信"), verbatim
// (seeds/003_2b63e0478ab19906.txt), apart from the lines marked below.
// Certificates are read from certs/ in the working directory, as in the seed.
// Added: the package clause and the imports (the generated package is
// seed003/helloworld, built by tests/gogrpc.py from
// tests/go/seeds/003_proto/hello_world.proto).
// Changed: the address dialled (the seed's "localhost:8080"): the first
// argument, so that the test can use a port from the OS.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	pb "seed003/helloworld"
)

func main() {
    cert, err := tls.LoadX509KeyPair("certs/test_client.pem", "certs/test_client.key")
    if err != nil {
        panic(err)
    }
    // 将根证书加入证书池
    certPool := x509.NewCertPool()
    bs, err := ioutil.ReadFile("certs/root.pem")
    if err != nil {
        panic(err)
    }
    if !certPool.AppendCertsFromPEM(bs) {
        panic("fail to append test ca")
    }
    // 新建凭证
    // ServerName 需要与服务器证书内的通用名称一致
    transportCreds := credentials.NewTLS(&tls.Config{
        ServerName:   "server.razeen.me",
        Certificates: []tls.Certificate{cert},
        RootCAs:      certPool,
    })
    dialOpt := grpc.WithTransportCredentials(transportCreds)
    conn, err := grpc.Dial(os.Args[1], dialOpt) // Changed: "localhost:8080".
    if err != nil {
        log.Fatalf("Dial failed:%v", err)
    }
    defer conn.Close()
    client := pb.NewHelloWorldServiceClient(conn)
    resp1, err := client.SayHelloWorld(context.Background(), &pb.HelloWorldRequest{
        Greeting: "Hello Server 1 !!",
        Infos:    map[string]string{"hello": "world"},
    })
    if err != nil {
        log.Printf("%v", err)
    }
    log.Printf("Resp1:%+v", resp1)
    resp2, err := client.SayHelloWorld(context.Background(), &pb.HelloWorldRequest{
        Greeting: "Hello Server 2 !!",
    })
    if err != nil {
        log.Printf("%v", err)
    }
    log.Printf("Resp2:%+v", resp2)

// 服务器端流式 RPC;
    // 向服务器SayHello 
    recvListHello, err := client.ListHello(context.Background(), &pb.HelloWorldRequest{Greeting: "Hello Server List Hello"})
    if err != nil {
        log.Fatalf("ListHello err: %v", err)
    }
    // 服务器以流式返回
    // 直到 err==io.EOF时,表示接收完毕。
    for {
        resp, err := recvListHello.Recv()
        if err == io.EOF {
            break
        }
        if err != nil {
            log.Fatal(err)
        }
        log.Printf("ListHello Server Resp: %v", resp.Reply)
    }
    // 客户端流式 RPC;
    sayMoreClient, err := client.SayMoreHello(context.Background())
    if err != nil {
        log.Fatal(err)
    }
    for i := 0; i < 3; i++ {
        sayMoreClient.Send(&pb.HelloWorldRequest{Greeting: fmt.Sprintf("SayMoreHello Hello Server %d", i)})
    }
    sayMoreResp, err := sayMoreClient.CloseAndRecv()
    if err != nil {
        log.Fatal(err)
    }
    log.Printf("SayMoreHello Server Resp: %v", sayMoreResp.Reply)
    // 双向流式 RPC;
    sayHelloChat, err := client.SayHelloChat(context.Background())
    if err != nil {
        log.Fatal(err)
    }
    go func() {
        for i := 0; i < 3; i++ {
            sayHelloChat.Send(&pb.HelloWorldRequest{Greeting: fmt.Sprintf("SayHelloChat Hello Server %d", i)})
        }
    }()
    for {
        resp, err := sayHelloChat.Recv()
        if err == io.EOF {
            break
        }
        if err != nil {
            log.Fatal(err)
        }
        log.Printf("SayHelloChat Server Say: %v", resp.Greeting)
    }
}
