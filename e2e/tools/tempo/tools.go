//go:build tools

// Package tools pins the Tempo release the trace tests send to and query.
package tools

import _ "github.com/grafana/tempo/cmd/tempo"
