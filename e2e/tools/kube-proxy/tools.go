//go:build tools

// Package tools pins kube-proxy of the same Kubernetes release as the
// `kubernetes` tool (same go.mod and go.sum), in a module of its own so that
// adding it leaves that tool's cache key, and so its build, untouched.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
