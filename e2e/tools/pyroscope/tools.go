//go:build tools

// Package tools pins the Pyroscope release the profile tests push to and query.
package tools

import _ "github.com/grafana/pyroscope/cmd/pyroscope"
