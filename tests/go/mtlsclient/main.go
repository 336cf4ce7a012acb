// A Go net/rpc client over mutual TLS, as seed 000 dials: tls.Dial then rpc.NewClient.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/rpc"
	"os"
)

type Args struct{ A, B int }

func main() {
	// usage: prog HOST:PORT SERVERNAME CA.pem CLIENT.pem CLIENT.key
	ca, err := os.ReadFile(os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair(os.Args[4], os.Args[5])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	conn, err := tls.Dial("tcp", os.Args[1], &tls.Config{
		RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: os.Args[2],
		MinVersion: tls.VersionTLS12,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	client := rpc.NewClient(conn)
	defer client.Close()
	var product int
	if err := client.Call("Arith.Multiply", &Args{7, 8}, &product); err != nil {
		fmt.Fprintln(os.Stderr, "call:", err)
		if err == rpc.ErrShutdown {
			// Under TLS 1.3 the server checks the client certificate after
			// Dial returned, so its alert may reach net/rpc's reader before
			// the call is sent. tls.Conn keeps the alert: read it back.
			_, readErr := conn.Read(make([]byte, 1))
			fmt.Fprintln(os.Stderr, "conn:", readErr)
		}
		os.Exit(1)
	}
	var square struct{ Num, Ans int }
	if err := client.Call("Cal.Square", 12, &square); err != nil {
		fmt.Fprintln(os.Stderr, "call:", err)
		os.Exit(1)
	}
	fmt.Println(product, square.Ans)
}
