package main

import "bytes"

// Parser is an incremental Server-Sent Events parser following the WHATWG
// HTML "Server-sent events" interpretation rules: lines end in CRLF, CR or LF
// (also when split across reads), a leading U+FEFF is dropped, lines starting
// with ':' are comments, "field: value" loses exactly one leading space, a
// blank line dispatches, and an event with an empty data buffer is dropped.
//
// It allocates only while its buffers grow, so it keeps up with hundreds of
// thousands of events per second on one core.
type Parser struct {
	line      []byte // a line split across reads
	skipLF    bool   // the previous read ended in CR: a leading LF belongs to it
	started   bool   // BOM check done
	data      []byte
	eventType []byte
	// LastID is the last event ID buffer; it survives reconnects (the caller
	// keeps the parser, or copies it).
	LastID   []byte
	Retry    int // last valid retry: field, in ms (-1: none)
	Comments int
	// OnEvent receives each dispatched event; the slices are only valid
	// during the call.
	OnEvent func(eventType, data, id []byte)
}

var messageType = []byte("message")

// NewParser returns a parser that calls onEvent for every dispatched event.
func NewParser(onEvent func(eventType, data, id []byte)) *Parser {
	return &Parser{OnEvent: onEvent, Retry: -1}
}

// Reset forgets a partial line and event (a new connection) but keeps the
// last event ID buffer and the reconnection time, as EventSource does.
func (p *Parser) Reset() {
	p.line = p.line[:0]
	p.skipLF = false
	p.started = false
	p.data = p.data[:0]
	p.eventType = p.eventType[:0]
}

// Feed parses the next bytes of the stream.
func (p *Parser) Feed(b []byte) {
	if !p.started {
		// The BOM may only be at the very start of the stream.
		if len(p.line)+len(b) < 3 && bytes.HasPrefix([]byte("\xEF\xBB\xBF"), append(p.line, b...)) {
			p.line = append(p.line, b...)
			return
		}
		p.started = true
		if len(p.line) > 0 {
			b = append(p.line[:len(p.line):len(p.line)], b...)
			p.line = p.line[:0]
		}
		b = bytes.TrimPrefix(b, []byte("\xEF\xBB\xBF"))
	}
	i := 0
	if p.skipLF {
		p.skipLF = false
		if len(b) > 0 && b[0] == '\n' {
			i = 1
		}
	}
	for i < len(b) {
		j := i
		for j < len(b) && b[j] != '\n' && b[j] != '\r' {
			j++
		}
		if j == len(b) {
			p.line = append(p.line, b[i:]...)
			return
		}
		line := b[i:j]
		if len(p.line) > 0 {
			p.line = append(p.line, line...)
			line = p.line
		}
		p.processLine(line)
		p.line = p.line[:0]
		i = j + 1
		if b[j] == '\r' {
			if i < len(b) {
				if b[i] == '\n' {
					i++
				}
			} else {
				p.skipLF = true
			}
		}
	}
}

func (p *Parser) processLine(line []byte) {
	if len(line) == 0 {
		p.dispatch()
		return
	}
	if line[0] == ':' {
		p.Comments++
		return
	}
	var name, value []byte
	if colon := bytes.IndexByte(line, ':'); colon >= 0 {
		name, value = line[:colon], line[colon+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	} else {
		name = line
	}
	switch string(name) {
	case "data":
		p.data = append(p.data, value...)
		p.data = append(p.data, '\n')
	case "event":
		p.eventType = append(p.eventType[:0], value...)
	case "id":
		if bytes.IndexByte(value, 0) < 0 {
			p.LastID = append(p.LastID[:0], value...)
		}
	case "retry":
		if len(value) > 0 {
			n := 0
			for _, c := range value {
				if c < '0' || c > '9' {
					return
				}
				n = n*10 + int(c-'0')
			}
			p.Retry = n
		}
	}
}

func (p *Parser) dispatch() {
	if len(p.data) == 0 {
		p.eventType = p.eventType[:0]
		return
	}
	data := p.data[:len(p.data)-1]
	typ := p.eventType
	if len(typ) == 0 {
		typ = messageType
	}
	if p.OnEvent != nil {
		p.OnEvent(typ, data, p.LastID)
	}
	p.data = p.data[:0]
	p.eventType = p.eventType[:0]
}

// jsonInt finds `"key"` in data and returns the integer after its colon. It
// accepts compact and spaced JSON; ok is false when the key is absent.
func jsonInt(data []byte, key []byte) (n int64, ok bool) {
	k := bytes.Index(data, key)
	if k < 0 {
		return 0, false
	}
	i := k + len(key)
	for i < len(data) && (data[i] == ' ' || data[i] == ':' || data[i] == '\t') {
		i++
	}
	start := i
	for i < len(data) && data[i] >= '0' && data[i] <= '9' {
		n = n*10 + int64(data[i]-'0')
		i++
	}
	return n, i > start
}
