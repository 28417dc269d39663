// Uninstrumented Go net/http peer for the tracer's end-to-end tests (standard library only).
//
//	gohub serve --port P --backend URL [--backend URL]...
//	    GET /fanout?id=N calls every backend in turn with the default keep-alive client,
//	    appending id=N to each backend URL's query, then answers 200 "id=N".
//	gohub drive --port P --requests R [--first-id F]
//	    sends R concurrent GET /fanout?id=F..F+R-1 with the default client, checks that each
//	    answer is 200 naming its own id, prints {"pid":PID} and exits 0 (1 on any failure).
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
)

type backends []string

func (b *backends) String() string     { return strings.Join(*b, ",") }
func (b *backends) Set(v string) error { *b = append(*b, v); return nil }

func withID(url, id string) string {
	if strings.Contains(url, "?") {
		return url + "&id=" + id
	}
	return url + "?id=" + id
}

func serve(args []string) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	port := fs.Int("port", 0, "port to listen on (127.0.0.1)")
	var urls backends
	fs.Var(&urls, "backend", "backend URL (repeatable)")
	fs.Parse(args)
	http.HandleFunc("/fanout", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		for _, url := range urls {
			resp, err := http.Get(withID(url, id))
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				http.Error(w, "backend status "+resp.Status, http.StatusBadGateway)
				return
			}
		}
		fmt.Fprintf(w, "id=%s", id)
	})
	err := http.ListenAndServe(fmt.Sprintf("127.0.0.1:%d", *port), nil)
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func drive(args []string) {
	fs := flag.NewFlagSet("drive", flag.ExitOnError)
	port := fs.Int("port", 0, "hub port (127.0.0.1)")
	requests := fs.Int("requests", 12, "concurrent requests")
	firstID := fs.Int("first-id", 0, "id of the first request")
	fs.Parse(args)
	var wg sync.WaitGroup
	failures := make(chan string, *requests)
	for i := 0; i < *requests; i++ {
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/fanout?id=%d", *port, id))
			if err != nil {
				failures <- err.Error()
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || string(body) != fmt.Sprintf("id=%d", id) {
				failures <- fmt.Sprintf("request %d: %s %q", id, resp.Status, body)
			}
		}(*firstID + i)
	}
	wg.Wait()
	close(failures)
	failed := false
	for f := range failures {
		fmt.Fprintln(os.Stderr, f)
		failed = true
	}
	if failed {
		os.Exit(1)
	}
	fmt.Printf("{\"pid\":%d}\n", os.Getpid())
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gohub serve|drive ...")
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
