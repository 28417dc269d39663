// Uninstrumented Go crypto/tls + net/http peer for the tracer's end-to-end tests (standard
// library only). The server's certificate is self-signed, generated in memory at start.
//
//	gotls serve --port P
//	    HTTPS on 127.0.0.1:P (HTTP/2 by ALPN unless GODEBUG=http2server=0):
//	    GET /item?id=N answers 200 "id=N"; GET /missing answers 404.
//	gotls drive --port P --requests R --conns C [--path /item]
//	    R GET requests, C at a time, over at most C keep-alive connections, the server's
//	    certificate not verified; each answer checked (200 naming its id, or 404 for /missing).
//	    Prints {"pid":PID,"proto":"HTTP/1.1"|"HTTP/2.0"} and exits 0 (1 on any failure).
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

func selfSigned() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func serve(args []string) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	port := fs.Int("port", 0, "port to listen on (127.0.0.1)")
	fs.Parse(args)
	mux := http.NewServeMux()
	mux.HandleFunc("/item", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "id=%s", r.URL.Query().Get("id"))
	})
	srv := &http.Server{
		Addr:      fmt.Sprintf("127.0.0.1:%d", *port),
		Handler:   mux,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{selfSigned()}},
	}
	err := srv.ListenAndServeTLS("", "")
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func drive(args []string) {
	fs := flag.NewFlagSet("drive", flag.ExitOnError)
	port := fs.Int("port", 0, "server port")
	requests := fs.Int("requests", 1, "requests in all")
	conns := fs.Int("conns", 1, "requests at a time (and connections at most)")
	path := fs.String("path", "/item", "path (/item or /missing)")
	fs.Parse(args)
	client := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
			ForceAttemptHTTP2:   true,
			MaxConnsPerHost:     *conns,
			MaxIdleConnsPerHost: *conns,
		},
	}
	var (
		mu     sync.Mutex
		failed []string
		proto  string
		wg     sync.WaitGroup
	)
	ids := make(chan int)
	for w := 0; w < *conns; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				url := fmt.Sprintf("https://127.0.0.1:%d%s?id=%d", *port, *path, id)
				resp, err := client.Get(url)
				if err != nil {
					mu.Lock()
					failed = append(failed, err.Error())
					mu.Unlock()
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				want, wantBody := 200, fmt.Sprintf("id=%d", id)
				if *path != "/item" {
					want, wantBody = 404, ""
				}
				mu.Lock()
				proto = resp.Proto
				if resp.StatusCode != want || (wantBody != "" && string(body) != wantBody) {
					failed = append(failed, fmt.Sprintf("id %d: %s %q", id, resp.Status, body))
				}
				mu.Unlock()
			}
		}()
	}
	for id := 0; id < *requests; id++ {
		ids <- id
	}
	close(ids)
	wg.Wait()
	if len(failed) > 0 {
		fmt.Fprintln(os.Stderr, failed)
		os.Exit(1)
	}
	fmt.Printf("{\"pid\":%d,\"proto\":%q}\n", os.Getpid(), proto)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gotls serve|drive ...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2:])
	case "drive":
		drive(os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}
