package main

import (
	"fmt"
	"reflect"
	"testing"
)

type got struct{ typ, data, id string }

func parseAll(chunks ...string) ([]got, *Parser) {
	var out []got
	p := NewParser(func(t, d, id []byte) { out = append(out, got{string(t), string(d), string(id)}) })
	for _, c := range chunks {
		p.Feed([]byte(c))
	}
	return out, p
}

func TestParserWHATWG(t *testing.T) {
	cases := []struct {
		name   string
		stream string
		want   []got
	}{
		{"lf", "data: a\n\n", []got{{"message", "a", ""}}},
		{"crlf", "data: a\r\n\r\n", []got{{"message", "a", ""}}},
		{"cr", "data: a\r\r", []got{{"message", "a", ""}}},
		{"mixed", "id: 1\revent: x\r\ndata: a\ndata: b\r\n\n", []got{{"x", "a\nb", "1"}}},
		{"one space stripped", "data:  two\n\n", []got{{"message", " two", ""}}},
		{"no space", "data:x\n\n", []got{{"message", "x", ""}}},
		{"comment ignored", ": hi\ndata: a\n\n", []got{{"message", "a", ""}}},
		{"empty data dropped", "event: x\n\ndata: a\n\n", []got{{"message", "a", ""}}},
		{"empty data line", "data\n\n", []got{{"message", "", ""}}},
		{"bom", "\xEF\xBB\xBFdata: a\n\n", []got{{"message", "a", ""}}},
		{"id persists", "id: 7\ndata: a\n\ndata: b\n\n", []got{{"message", "a", "7"}, {"message", "b", "7"}}},
		{"id with nul ignored", "id: 7\ndata: a\n\nid: 8\x00\ndata: b\n\n", []got{{"message", "a", "7"}, {"message", "b", "7"}}},
		{"unknown field", "foo: bar\ndata: a\n\n", []got{{"message", "a", ""}}},
		{"no final blank line", "data: a\n\ndata: b\n", []got{{"message", "a", ""}}},
	}
	for _, c := range cases {
		// Every split point of the stream must give the same events.
		for cut := 0; cut <= len(c.stream); cut++ {
			out, _ := parseAll(c.stream[:cut], c.stream[cut:])
			if !reflect.DeepEqual(out, c.want) && !(len(out) == 0 && len(c.want) == 0) {
				t.Errorf("%s (cut %d): got %v, want %v", c.name, cut, out, c.want)
			}
		}
		// And byte by byte.
		chunks := make([]string, len(c.stream))
		for i := 0; i < len(c.stream); i++ {
			chunks[i] = c.stream[i : i+1]
		}
		if out, _ := parseAll(chunks...); fmt.Sprint(out) != fmt.Sprint(c.want) {
			t.Errorf("%s (bytewise): got %v, want %v", c.name, out, c.want)
		}
	}
}

func TestParserRetry(t *testing.T) {
	_, p := parseAll("retry: 2000\n: open\n\nretry: x1\n")
	if p.Retry != 2000 || p.Comments != 1 {
		t.Fatalf("retry %d comments %d", p.Retry, p.Comments)
	}
}

func TestJSONInt(t *testing.T) {
	for _, s := range []string{`{"seq":42,"t":5}`, `{"seq": 42, "t": 5}`, `{"t":5,"seq":42}`} {
		n, ok := jsonInt([]byte(s), []byte(`"seq"`))
		if !ok || n != 42 {
			t.Fatalf("%s: %d %v", s, n, ok)
		}
	}
	if _, ok := jsonInt([]byte(`{"x":1}`), []byte(`"seq"`)); ok {
		t.Fatal("found missing key")
	}
}
