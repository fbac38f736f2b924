package main

// The resume storm (--storm-events E): what a deploy or a network blip does
// to a hub. With no stream open, E events are published (in batches of
// --batch) and their ids recorded from the POST /publish answers; then
// --streams streams open at once, each with a Last-Event-ID of one of the
// early ids (resumeIndices), so each must be replayed hundreds of events.
// Meanwhile a probe publishes small single events (one POST every
// --storm-publish-interval, --storm-publishes at most) and times the requests. Measured: the time from
// the first connect until every stream has received every pre-published
// event after its id, the sse-hub-gap events, missing and duplicate events
// per stream (the probe's events included), and the probe's POST latency.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync/atomic"
	"time"
)

// resumeIndices gives stream k of n the index of the event it resumes after:
// spread evenly over the first span events (0 <= index < span), so that
// stream k misses events-1-index of them, at least events-span.
func resumeIndices(n, events int, span float64) []int {
	early := int(math.Round(span * float64(events)))
	if early < 1 {
		early = 1
	}
	if early > events {
		early = events
	}
	out := make([]int, n)
	for k := range out {
		out[k] = k * early / n
		if n < early && n > 1 {
			// Fewer streams than candidate ids: include both ends.
			out[k] = k * (early - 1) / (n - 1)
		}
	}
	return out
}

func (g *gen) onStormEvent(s *stream) func(typ, data, id []byte) {
	pre := int64(g.cfg.StormEvents)
	return func(typ, data, _ []byte) {
		seq, ok := jsonInt(data, g.seqKey)
		if !ok || seq < 0 || seq >= int64(len(s.counts)) {
			if string(typ) == "sse-hub-gap" {
				s.gaps++
			} else {
				s.other++
			}
			return
		}
		if seq < pre && seq <= int64(s.from) {
			s.unexpected++ // at or before its Last-Event-ID: the client had it
			return
		}
		if s.counts[seq] > 0 {
			s.dups++
			if s.counts[seq] < 255 {
				s.counts[seq]++
			}
			return
		}
		now := time.Now().UnixNano()
		s.counts[seq] = 1
		s.delivered++
		if seq < s.lastSeq {
			s.outOfOrder++
		}
		s.lastSeq = seq
		atomic.AddInt64(&g.delivered, 1)
		for {
			old := atomic.LoadInt64(&g.lastRecv)
			if now <= old || atomic.CompareAndSwapInt64(&g.lastRecv, old, now) {
				break
			}
		}
		if seq < pre {
			atomic.AddInt64(&g.replayed, 1)
			s.resumed++
			if s.resumed == s.need {
				s.doneAt = now
				atomic.AddInt64(&g.stormRemaining, -1)
			}
			return
		}
		sent, _ := jsonInt(data, g.tKey)
		s.lat = append(s.lat, int32((now-sent)/1000))
		atomic.AddInt64(&g.liveDelivered, 1)
	}
}

// prepublish publishes events 0..n-1 in batches (JSON arrays) and returns
// their ids, taken from the answers ({"ids": [...]}).
func (g *gen) prepublish(pub *publisher, n int) ([]string, error) {
	ids := make([]string, 0, n)
	var buf bytes.Buffer
	for lo := 0; lo < n; lo += g.cfg.Batch {
		hi := lo + g.cfg.Batch
		if hi > n {
			hi = n
		}
		pub.encode(lo, hi, time.Now().UnixNano(), &buf, true)
		answer, err := pub.postRead(buf.Bytes())
		if err != nil {
			return nil, fmt.Errorf("events %d..%d: %v", lo, hi-1, err)
		}
		var got struct {
			IDs []string `json:"ids"`
		}
		if err := json.Unmarshal(answer, &got); err != nil || len(got.IDs) != hi-lo {
			return nil, fmt.Errorf("events %d..%d: answer without %d ids: %.200s", lo, hi-1, hi-lo, answer)
		}
		ids = append(ids, got.IDs...)
	}
	return ids, nil
}

func (g *gen) runStorm() map[string]any {
	c := g.cfg
	pre := c.StormEvents
	g.phase("publishing")
	rep := map[string]any{"config": c, "label": c.Label, "mode": "resume-storm"}
	warn := []string{}
	if c.Warmup {
		if err := g.warmup(); err != nil {
			warn = append(warn, "warm-up: "+err.Error())
			logf("warm-up failed: %v", err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	rssBase := rssKB(c.ServerPID)
	pubURL := strings.TrimRight(c.URL, "/") + c.PublishPath

	// 1. The events the streams will have missed, published with none open.
	prePub := &publisher{g: g, client: newClient(1), url: pubURL}
	preStart := time.Now()
	ids, err := g.prepublish(prePub, pre)
	if err != nil {
		fatal("pre-publish: %v", err)
	}
	preSec := time.Since(preStart).Seconds()
	logf("%d events published in %.2f s with no stream open", pre, preSec)
	time.Sleep(300 * time.Millisecond)
	rssBefore := rssKB(c.ServerPID)

	// 2. The streams, each resuming from an early id.
	probes := c.StormPublishes
	if probes < 0 {
		probes = 0
	}
	from := resumeIndices(c.Streams, pre, c.StormSpan)
	streams := make([]*stream, c.Streams)
	waiting := int64(0)
	minMissed, maxMissed := pre, 0
	for i := range streams {
		s := &stream{idx: i, counts: make([]uint8, pre+probes), lastSeq: -1, from: from[i],
			need: pre - 1 - from[i]}
		s.parser = NewParser(g.onStormEvent(s))
		s.parser.LastID = []byte(ids[from[i]])
		if s.need > 0 {
			waiting++
		}
		if s.need < minMissed {
			minMissed = s.need
		}
		if s.need > maxMissed {
			maxMissed = s.need
		}
		streams[i] = s
	}
	atomic.StoreInt64(&g.stormRemaining, waiting)

	stopSampling := sampleRSS(c.ServerPID, rssBefore)

	g.phase("storm")
	cpuServer0 := cpuSeconds(c.ServerPID)
	cpuAux0 := cpuSeconds(c.AuxPID)
	cpuSelf0 := selfCPUSeconds()
	op := g.openStreams(streams)
	t0 := op.t0

	// 3. The probe: single POSTs during the storm, until every stream has resumed.
	probe := &publisher{g: g, client: newClient(1), url: pubURL, ok: make([]bool, pre+probes), noPad: true}
	stormOver := make(chan struct{})
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		var buf bytes.Buffer
		for i := 0; i < probes; i++ {
			at := t0.Add(time.Duration(float64(c.StormInterval) * (float64(i) + 0.5)))
			select {
			case <-stormOver:
				return
			case <-time.After(time.Until(at)):
			}
			seq := pre + i
			t := time.Now()
			probe.encode(seq, seq+1, t.UnixNano(), &buf, false)
			if err := probe.post(buf.Bytes()); err != nil {
				probe.errors++
				probe.lastErr = err.Error()
				continue
			}
			probe.reqLat = append(probe.reqLat, float64(time.Since(t).Microseconds())/1000)
			probe.ok[seq] = true
		}
	}()

	// 4. Wait until every stream has resumed (or no replayed event for
	// --drain-timeout, or --deadline), then for the probe's events.
	lastCount, lastProgress := int64(-1), time.Now()
	timedOut := false
	var stormEnd time.Time
	for {
		time.Sleep(10 * time.Millisecond)
		now := time.Now()
		if atomic.LoadInt64(&g.stormRemaining) <= 0 {
			stormEnd = now
			break
		}
		if d := atomic.LoadInt64(&g.replayed); d != lastCount {
			lastCount, lastProgress = d, now
		}
		if now.Sub(lastProgress) > c.DrainTimeout || now.Sub(t0) > c.Deadline {
			timedOut = true
			stormEnd = now
			break
		}
	}
	close(stormOver)
	cpuServer := cpuSeconds(c.ServerPID) - cpuServer0
	cpuAux := cpuSeconds(c.AuxPID) - cpuAux0
	cpuSelf := selfCPUSeconds() - cpuSelf0
	<-probeDone
	op.opened.Wait()
	opened := 0
	for _, s := range streams {
		if s.opened {
			opened++
		}
	}
	probeOK := 0
	for _, ok := range probe.ok {
		if ok {
			probeOK++
		}
	}
	wantLive := int64(probeOK) * int64(opened)
	lastCount, lastProgress = -1, time.Now()
	for atomic.LoadInt64(&g.liveDelivered) < wantLive {
		now := time.Now()
		if d := atomic.LoadInt64(&g.liveDelivered); d != lastCount {
			lastCount, lastProgress = d, now
		}
		if now.Sub(lastProgress) > c.DrainTimeout || now.Sub(t0) > c.Deadline+c.DrainTimeout {
			timedOut = true
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Whatever is still in flight (a duplicate, a late gap event) gets a moment.
	time.Sleep(300 * time.Millisecond)
	g.phase("done")
	rssPeak := stopSampling()
	rssEnd := rssKB(c.ServerPID)
	warn = append(warn, g.stopStreams(streams, &op.done)...)

	// Analyse.
	missing, missingLive, dups, outOfOrder, other, gaps, reconnects, unexpected := 0, 0, 0, 0, 0, 0, 0, 0
	streamsMissing, maxMissing, maxDups, streamsGap, incomplete := 0, 0, 0, 0, 0
	var deliveries, replayed int64
	var lats []int32
	var doneSec []float64
	errCounts := map[string]int{}
	for _, s := range streams {
		if s.lastErr != "" {
			errCounts[s.lastErr]++
		}
		if !s.opened {
			continue
		}
		m := 0
		for seq := s.from + 1; seq < pre; seq++ {
			if s.counts[seq] == 0 {
				m++
			}
		}
		ml := 0
		for seq := pre; seq < len(s.counts); seq++ {
			if probe.ok[seq] && s.counts[seq] == 0 {
				ml++
			}
		}
		if m > 0 {
			incomplete++
		} else if s.need > 0 {
			doneSec = append(doneSec, float64(s.doneAt-t0.UnixNano())/1e9)
		}
		missing += m + ml
		missingLive += ml
		if m+ml > 0 {
			streamsMissing++
		}
		if m+ml > maxMissing {
			maxMissing = m + ml
		}
		if s.dups > maxDups {
			maxDups = s.dups
		}
		if s.gaps > 0 {
			streamsGap++
		}
		dups += s.dups
		outOfOrder += s.outOfOrder
		other += s.other
		gaps += s.gaps
		reconnects += s.reconnects
		unexpected += s.unexpected
		deliveries += int64(s.delivered)
		replayed += int64(s.resumed)
		lats = append(lats, s.lat...)
	}
	sort.Float64s(doneSec)
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	sort.Float64s(probe.reqLat)
	var expectReplay int64
	for _, s := range streams {
		if s.opened {
			expectReplay += int64(s.need)
		}
	}
	resumeSec := math.NaN()
	if !timedOut && incomplete == 0 && opened == c.Streams {
		resumeSec = stormEnd.Sub(t0).Seconds()
		if len(doneSec) > 0 {
			resumeSec = doneSec[len(doneSec)-1]
		}
	}
	connectSec := 0.0
	if lastOpen := atomic.LoadInt64(&op.lastOpen); lastOpen > 0 {
		connectSec = float64(lastOpen-t0.UnixNano()) / 1e9
	}
	stormWall := stormEnd.Sub(t0).Seconds()
	sum := 0.0
	for _, l := range lats {
		sum += float64(l)
	}
	kbPer := any(nil)
	if c.ServerPID != 0 && opened > 0 && rssEnd > 0 {
		kbPer = round(float64(rssEnd-rssBefore)/float64(opened), 2)
	}
	rep["streams"] = c.Streams
	rep["streams_opened"] = opened
	rep["connect_seconds"] = round(connectSec, 3)
	rep["stream_errors"] = errCounts
	rep["events"] = pre + probeOK
	rep["published"] = pre + probeOK
	rep["publish_requests"] = len(probe.reqLat) + probe.errors
	rep["publish_errors"] = probe.errors
	rep["publish_last_error"] = probe.lastErr
	rep["publish_request_ms"] = map[string]any{
		"p50": round(percentileF(probe.reqLat, 0.5), 3), "p99": round(percentileF(probe.reqLat, 0.99), 3),
		"max": round(percentileF(probe.reqLat, 1), 3)}
	rep["expected_deliveries"] = expectReplay + wantLive
	rep["deliveries"] = deliveries
	rep["burst_seconds"] = round(stormWall, 3)
	rep["deliveries_per_s"] = round(float64(replayed)/stormWall, 1)
	rep["latency_ms"] = map[string]any{ // of the probe's events, publish -> receive
		"p50": round(percentile(lats, 0.5), 2), "p90": round(percentile(lats, 0.9), 2),
		"p99": round(percentile(lats, 0.99), 2), "max": round(percentile(lats, 1), 2),
		"mean": round(sum/float64(len(lats))/1000, 2)}
	rep["missing"] = missing
	rep["duplicates"] = dups
	rep["streams_with_missing"] = streamsMissing
	rep["max_missing_per_stream"] = maxMissing
	rep["max_duplicates_per_stream"] = maxDups
	rep["out_of_order"] = outOfOrder
	rep["other_events"] = other
	rep["gap_events"] = gaps
	rep["reconnects"] = reconnects
	rep["timed_out"] = timedOut
	rep["rss_kb"] = map[string]any{"baseline": rssBase, "connected": rssBefore, "peak": rssPeak, "end": rssEnd}
	rep["kb_per_stream"] = kbPer
	rep["cpu"] = map[string]any{
		"wall_seconds": round(stormWall, 3),
		"server_pct":   round(100*cpuServer/stormWall, 1),
		"aux_pct":      round(100*cpuAux/stormWall, 1),
		"loadgen_pct":  round(100*cpuSelf/stormWall, 1),
	}
	rep["storm"] = map[string]any{
		"events":                   pre,
		"event_bytes":              c.EventBytes,
		"batch":                    c.Batch,
		"prepublish_seconds":       round(preSec, 3),
		"resume_ids":               map[string]any{"first": ids[from[0]], "last": ids[from[len(from)-1]], "newest_event": ids[pre-1]},
		"missed_per_stream":        map[string]any{"min": minMissed, "max": maxMissed},
		"resume_seconds":           round(resumeSec, 3),
		"stream_resume_seconds":    map[string]any{"p50": round(percentileF(doneSec, 0.5), 3), "p99": round(percentileF(doneSec, 0.99), 3), "max": round(percentileF(doneSec, 1), 3)},
		"streams_incomplete":       incomplete,
		"streams_with_gap":         streamsGap,
		"expected_replayed":        expectReplay,
		"replayed":                 replayed,
		"missing_live":             missingLive,
		"unexpected_events":        unexpected,
		"probe_publishes":          probeOK,
		"probe_interval_ms":        c.StormInterval.Milliseconds(),
		"replayed_mb":              round(float64(replayed)*float64(c.EventBytes)/1e6, 1),
		"dial_concurrency":         c.DialConc,
		"live_deliveries_expected": wantLive,
	}
	rep["warnings"] = warn
	logf("storm: %d/%d streams resumed %d/%d events in %.2f s (%s), gaps %d, missing %d, dups %d, "+
		"reconnects %d, probe POST p50 %.1f ms max %.1f ms (%d)",
		opened-incomplete, c.Streams, replayed, expectReplay, stormWall,
		map[bool]string{true: "timed out", false: "all done"}[timedOut], gaps, missing, dups, reconnects,
		percentileF(probe.reqLat, 0.5), percentileF(probe.reqLat, 1), len(probe.reqLat))
	return rep
}
