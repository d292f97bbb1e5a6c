//go:build tools

// Package tools pins the Prometheus 3.x release the tests write to and query.
package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
