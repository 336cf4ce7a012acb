// Seed 003: the gRPC server with mutual TLS (section "服务端实现") and its
// three streaming methods (section "流式的RPC通信"), verbatim
// (seeds/003_2b63e0478ab19906.txt), apart from the lines marked below.
// Certificates are read from certs/ in the working directory, as in the seed.
// Added: the package clause, the imports (the generated package is
// seed003/helloworld, built by tests/gogrpc.py from
// tests/go/seeds/003_proto/hello_world.proto), the SayHelloServer type and
// its SayHelloWorld method (the seed's earlier article has them; this one
// does not show them), both marked "Added".
// Changed: the listening address (the seed's ":8080"): 127.0.0.1, port from
// the OS, printed for the test to read; the streams' one-second pauses are
// SEED003_PAUSE (a Go duration) when it is set, so that tests need not wait.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"io/ioutil"
	"log"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	pb "seed003/helloworld"
)

// Added: the service type and its unary method.
type SayHelloServer struct{}

// Added: answers the seed client's two SayHelloWorld calls.
func (s *SayHelloServer) SayHelloWorld(ctx context.Context, in *pb.HelloWorldRequest) (*pb.HelloWorldResponse, error) {
	log.Printf("Client Greeting:%s", in.Greeting)
	log.Printf("Client Info:%v", in.Infos)
	return &pb.HelloWorldResponse{Reply: "Hello World !!"}, nil
}

// Added: the streams' pause (the seed's 1 * time.Second), SEED003_PAUSE if set.
var pause = 1 * time.Second

// Added: reads SEED003_PAUSE.
func init() {
	if p, err := time.ParseDuration(os.Getenv("SEED003_PAUSE")); err == nil {
		pause = p
	}
}

func main() {
    lis, err := net.Listen("tcp", "127.0.0.1:0") // Changed: ":8080".
    if err != nil {
        panic(err)
    }
    // 加载证书和密钥 (同时能验证证书与私钥是否匹配)
    cert, err := tls.LoadX509KeyPair("certs/test_server.pem", "certs/test_server.key")
    if err != nil {
        panic(err)
    }
    // 将根证书加入证书池
    // 测试证书的根如果不加入可信池,那么测试证书将视为不可惜,无法通过验证。
    certPool := x509.NewCertPool()
    rootBuf, err := ioutil.ReadFile("certs/root.pem")
    if err != nil {
        panic(err)
    }
    if !certPool.AppendCertsFromPEM(rootBuf) {
        panic("fail to append test ca")
    }
    tlsConf := &tls.Config{
        ClientAuth:   tls.RequireAndVerifyClientCert,
        Certificates: []tls.Certificate{cert},
        ClientCAs:    certPool,
    }
    serverOpt := grpc.Creds(credentials.NewTLS(tlsConf))
    grpcServer := grpc.NewServer(serverOpt)
    pb.RegisterHelloWorldServiceServer(grpcServer, &SayHelloServer{})
    log.Println("Server Start...")
    log.Println("listening on", lis.Addr()) // Added: the test reads the port here.
    grpcServer.Serve(lis)
}

// 服务器端流式 RPC, 接收一次客户端请求,返回一个流
func (s *SayHelloServer) ListHello(in *pb.HelloWorldRequest, stream pb.HelloWorldService_ListHelloServer) error {
    log.Printf("Client Say: %v", in.Greeting)
    // 返回多条数据
    stream.Send(&pb.HelloWorldResponse{Reply: "ListHello Reply " + in.Greeting + " 1"})
    time.Sleep(pause) // Changed: 1 * time.Second.
    stream.Send(&pb.HelloWorldResponse{Reply: "ListHello Reply " + in.Greeting + " 2"})
    time.Sleep(pause) // Changed: 1 * time.Second.
    stream.Send(&pb.HelloWorldResponse{Reply: "ListHello Reply " + in.Greeting + " 3"})
    time.Sleep(pause) // Changed: 1 * time.Second.
    return nil
}
// 客户端流式 RPC, 客户端流式请求,服务器可返回一次
func (s *SayHelloServer) SayMoreHello(stream pb.HelloWorldService_SayMoreHelloServer) error {
    // 接受客户端请求
    for {
        req, err := stream.Recv()
        if err == io.EOF {
            break
        }
        if err != nil {
            return err
        }
        log.Printf("SayMoreHello Client Say: %v", req.Greeting)
    }
    // 流读取完成后,返回
    return stream.SendAndClose(&pb.HelloWorldResponse{Reply: "SayMoreHello Recv Muti Greeting"})
}
// 双向流式 RPC
func (s *SayHelloServer) SayHelloChat(stream pb.HelloWorldService_SayHelloChatServer) error {
    // 开一个协程去处理客户端数据
    go func() {
        for {
            req, err := stream.Recv()
            if err == io.EOF {
                break
            }
            if err != nil {
                return
            }
            log.Printf("SayHelloChat Client Say: %v", req.Greeting)
        }
    }()
    // 向客户端写入多条数据
    stream.Send(&pb.HelloWorldRequest{Greeting: "SayHelloChat Server Say Hello 1"})
    time.Sleep(pause) // Changed: 1 * time.Second.
    stream.Send(&pb.HelloWorldRequest{Greeting: "SayHelloChat Server Say Hello 2"})
    time.Sleep(pause) // Changed: 1 * time.Second.
    stream.Send(&pb.HelloWorldRequest{Greeting: "SayHelloChat Server Say Hello 3"})
    time.Sleep(pause) // Changed: 1 * time.Second.
    return nil
}
