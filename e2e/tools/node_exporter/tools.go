//go:build tools

// Package tools pins the node_exporter release whose metrics the node-agent's
// host metrics are compared with.
package tools

import _ "github.com/prometheus/node_exporter"
