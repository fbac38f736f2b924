package main

import "testing"

func TestResumeIndices(t *testing.T) {
	cases := []struct {
		n, events int
		span      float64
	}{
		{2000, 600, 1.0 / 3}, {300, 600, 1.0 / 3}, {7, 600, 1.0 / 3}, {1, 600, 1.0 / 3},
		{200, 200, 1.0 / 3}, {5, 10, 1}, {3, 1, 1.0 / 3},
	}
	for _, tc := range cases {
		got := resumeIndices(tc.n, tc.events, tc.span)
		if len(got) != tc.n {
			t.Fatalf("%+v: %d indices, want %d", tc, len(got), tc.n)
		}
		early := int(tc.span*float64(tc.events) + 0.5)
		if early < 1 {
			early = 1
		}
		perIndex := map[int]int{}
		for k, i := range got {
			if i < 0 || i >= early || i >= tc.events {
				t.Fatalf("%+v: stream %d resumes after event %d, outside [0, %d)", tc, k, i, early)
			}
			if k > 0 && i < got[k-1] {
				t.Fatalf("%+v: not spread in order: %v", tc, got)
			}
			if missed := tc.events - 1 - i; missed < tc.events-early {
				t.Fatalf("%+v: stream %d misses only %d events", tc, k, missed)
			}
			perIndex[i]++
		}
		// Evenly spread: from the first id to the last early one, and (with
		// at least one stream per id) no id used more than once above another.
		if got[0] != 0 {
			t.Fatalf("%+v: first stream resumes after %d, want 0", tc, got[0])
		}
		if tc.n >= 2 && got[tc.n-1] != early-1 {
			t.Fatalf("%+v: last stream resumes after %d, want %d", tc, got[tc.n-1], early-1)
		}
		lo, hi := tc.n, 0
		for _, c := range perIndex {
			if c < lo {
				lo = c
			}
			if c > hi {
				hi = c
			}
		}
		if tc.n >= early && (len(perIndex) != early || hi-lo > 1) {
			t.Fatalf("%+v: uneven spread over %d ids (%d..%d streams per id)", tc, len(perIndex), lo, hi)
		}
	}
}

func TestResumeIndicesSpreadsHundredsMissed(t *testing.T) {
	// The benchmark's scenario: 2 000 streams, 600 events, a third of them as resume points.
	got := resumeIndices(2000, 600, 1.0/3)
	minMissed, maxMissed := 600, 0
	for _, i := range got {
		m := 600 - 1 - i
		if m < minMissed {
			minMissed = m
		}
		if m > maxMissed {
			maxMissed = m
		}
	}
	if minMissed != 400 || maxMissed != 599 {
		t.Fatalf("streams miss %d..%d events, want 400..599", minMissed, maxMissed)
	}
}
