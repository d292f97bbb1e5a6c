//go:build tools

// Package tools pins the Jaeger v2 release that stands in for Tempo in tests:
// Tempo's module is not served by the Go module registry (see README.md).
package tools

import _ "github.com/jaegertracing/jaeger/cmd/jaeger"
