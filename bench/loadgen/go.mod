module flask-sse-hub/bench/loadgen

go 1.19
