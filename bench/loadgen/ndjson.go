package main

// The streaming publish (--ndjson): each publisher sends ONE long
// POST /publish with Content-Type application/x-ndjson, one event object per
// line, written as fast as the connection takes them, and reads the answer's
// result lines ({"id": ...} or {"error": ...}, one per event line, in order)
// while it is still writing. docs/protocol.md#streaming-publish.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// runNDJSON publishes events 0..events-1, split into --publishers contiguous
// ranges, one streaming request each. reqLat gets one entry per line: the
// time from writing the line to reading its result.
func (p *publisher) runNDJSON(events int) {
	c := p.g.cfg
	var wg sync.WaitGroup
	for w := 0; w < c.Publishers; w++ {
		lo, hi := w*events/c.Publishers, (w+1)*events/c.Publishers
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.record(p.stream(lo, hi))
		}()
	}
	wg.Wait()
}

func (p *publisher) stream(lo, hi int) (lats []float64, errs int, lastErr string) {
	sent := make([]int64, hi-lo) // unix ns each line was handed to the connection
	body, writer := io.Pipe()
	go func() {
		// net/http sends a body of unknown length chunked; the buffer makes
		// its chunks about 32 KB, as a publisher writing as fast as it can would.
		out := bufio.NewWriterSize(writer, 32<<10)
		var line bytes.Buffer
		for i := lo; i < hi; i++ {
			now := time.Now().UnixNano()
			atomic.CompareAndSwapInt64(&p.first, 0, now)
			p.encode(i, i+1, now, &line, false)
			line.WriteByte('\n')
			atomic.StoreInt64(&sent[i-lo], now)
			if _, err := out.Write(line.Bytes()); err != nil {
				return // the request failed: the reader reports it
			}
		}
		writer.CloseWithError(out.Flush())
	}()
	req, _ := http.NewRequest("POST", p.url, body)
	req.Header.Set("Content-Type", "application/x-ndjson")
	if p.g.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+p.g.cfg.Token)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		body.CloseWithError(err)
		return nil, hi - lo, err.Error()
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		body.CloseWithError(io.ErrClosedPipe)
		return nil, hi - lo, fmt.Sprintf("HTTP %d: %.200s", resp.StatusCode, msg)
	}
	results := bufio.NewScanner(resp.Body)
	results.Buffer(make([]byte, 64<<10), 1<<20)
	i := lo
	for ; i < hi && results.Scan(); i++ {
		var result struct {
			ID    string `json:"id"`
			Error string `json:"error"`
		}
		if err := json.Unmarshal(results.Bytes(), &result); err != nil || result.ID == "" {
			errs++
			lastErr = fmt.Sprintf("line %d: %.200s", i, results.Text())
			continue
		}
		p.ok[i] = true
		lats = append(lats, float64(time.Now().UnixNano()-atomic.LoadInt64(&sent[i-lo]))/1e6)
	}
	if i < hi { // the answer ended early
		errs += hi - i
		lastErr = fmt.Sprintf("the answer ended after %d of %d result lines (%v)", i-lo, hi-lo, results.Err())
		body.CloseWithError(io.ErrClosedPipe)
	}
	return lats, errs, lastErr
}
