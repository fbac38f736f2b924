package main

// A trivial SSE server with the same HTTP API as the peers (POST /publish,
// GET /stream?channel=, GET /healthz), used to measure the load generator's
// own ceiling. It is the classic Go design — one buffered channel per client,
// one goroutine writing to it — plus coalescing: a writer sends everything
// queued for its client in one write. Each published batch is encoded once.

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

type sseClient struct {
	ch       chan []byte
	dead     chan struct{}
	once     sync.Once
	channels []string
}

func (c *sseClient) kill() { c.once.Do(func() { close(c.dead) }) }

type trivialHub struct {
	mu     sync.Mutex
	subs   map[string]map[*sseClient]struct{}
	nextID int64
}

func serveMain(args []string) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	queue := fs.Int("queue", 1024, "chunks queued per client before it is dropped as slow")
	fs.Parse(args)
	raiseNoFile()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
	h := &trivialHub{subs: map[string]map[*sseClient]struct{}{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"status":"ok"}`)
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) { h.stream(w, r, *queue) })
	mux.HandleFunc("/publish", h.publish)
	fmt.Printf("listening %s\n", ln.Addr())
	os.Stdout.Sync()
	http.Serve(ln, mux)
}

func (h *trivialHub) stream(w http.ResponseWriter, r *http.Request, queue int) {
	channels := r.URL.Query()["channel"]
	if len(channels) == 0 {
		channels = []string{"default"}
	}
	c := &sseClient{ch: make(chan []byte, queue), dead: make(chan struct{}), channels: channels}
	h.mu.Lock()
	for _, name := range channels {
		if h.subs[name] == nil {
			h.subs[name] = map[*sseClient]struct{}{}
		}
		h.subs[name][c] = struct{}{}
	}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		for _, name := range channels {
			delete(h.subs[name], c)
		}
		h.mu.Unlock()
	}()
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream; charset=utf-8")
	hd.Set("Cache-Control", "no-store")
	w.WriteHeader(200)
	flusher := w.(http.Flusher)
	io.WriteString(w, "retry: 2000\n: open\n\n")
	flusher.Flush()
	ticker := time.NewTicker(15 * time.Second)
	defer ticker.Stop()
	buf := make([]byte, 0, 64<<10)
	for {
		select {
		case b := <-c.ch:
			buf = append(buf[:0], b...)
		more:
			for len(buf) < 256<<10 {
				select {
				case b2 := <-c.ch:
					buf = append(buf, b2...)
				default:
					break more
				}
			}
			if _, err := w.Write(buf); err != nil {
				return
			}
			flusher.Flush()
		case <-ticker.C:
			if _, err := io.WriteString(w, ": ping\n\n"); err != nil {
				return
			}
			flusher.Flush()
		case <-c.dead:
			return
		case <-r.Context().Done():
			return
		}
	}
}

type publishItem struct {
	Channel string          `json:"channel"`
	Event   string          `json:"event"`
	Data    json.RawMessage `json:"data"`
}

func (h *trivialHub) publish(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, `{"error":"read"}`, 400)
		return
	}
	body = bytes.TrimSpace(body)
	var items []publishItem
	batch := len(body) > 0 && body[0] == '['
	if batch {
		err = json.Unmarshal(body, &items)
	} else {
		var one publishItem
		err = json.Unmarshal(body, &one)
		items = []publishItem{one}
	}
	if err != nil || len(items) == 0 {
		w.WriteHeader(400)
		io.WriteString(w, `{"error":"bad JSON"}`)
		return
	}
	h.mu.Lock()
	first := h.nextID + 1
	h.nextID += int64(len(items))
	// Encode once per event, join once per channel.
	byChannel := map[string]*bytes.Buffer{}
	var order []string
	for i, it := range items {
		ch := it.Channel
		if ch == "" {
			ch = "default"
		}
		b := byChannel[ch]
		if b == nil {
			b = &bytes.Buffer{}
			byChannel[ch] = b
			order = append(order, ch)
		}
		b.WriteString("id: ")
		b.WriteString(strconv.FormatInt(first+int64(i), 10))
		b.WriteByte('\n')
		if it.Event != "" {
			b.WriteString("event: " + it.Event + "\n")
		}
		text := string(it.Data)
		var s string
		if len(it.Data) > 0 && it.Data[0] == '"' && json.Unmarshal(it.Data, &s) == nil {
			text = s
		} else {
			var cb bytes.Buffer
			if json.Compact(&cb, it.Data) == nil {
				text = cb.String()
			}
		}
		text = strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(text)
		b.WriteString("data: " + strings.ReplaceAll(text, "\n", "\ndata: ") + "\n\n")
	}
	type target struct {
		chunk []byte
		subs  []*sseClient
	}
	var targets []target
	for _, ch := range order {
		t := target{chunk: byChannel[ch].Bytes()}
		for c := range h.subs[ch] {
			t.subs = append(t.subs, c)
		}
		targets = append(targets, t)
	}
	h.mu.Unlock()
	for _, t := range targets {
		for _, c := range t.subs {
			select {
			case c.ch <- t.chunk:
			default:
				c.kill() // slow: its client reconnects
			}
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(202)
	if batch {
		ids := make([]string, len(items))
		for i := range items {
			ids[i] = strconv.FormatInt(first+int64(i), 10)
		}
		json.NewEncoder(w).Encode(map[string][]string{"ids": ids})
	} else {
		fmt.Fprintf(w, `{"id":"%d"}`, first)
	}
}
