# Vispyr: `make demo` and `make test` are the two commands a new user needs.
# Every target installs what it needs first and caches it outside the clone.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Expensive artefacts live outside the clone so that a fresh clone on the same
# machine (CI) reuses them; keyed by pinned versions where they are built.
CACHE ?= $(HOME)/.cache/vispyr
export CARGO_TARGET_DIR ?= $(CACHE)/target
# CI builds each clone once: incremental artefacts would only cost disk and time.
ifdef CI
export CARGO_INCREMENTAL ?= 0
endif
# The upstream tools the harness runs: directories of e2e/tools/.
TOOLS := etcd kubernetes kube-proxy coredns prometheus tempo pyroscope helm node_exporter
# Only `make bench` needs these (the gateway benchmark's baseline, a long build).
BENCH_TOOLS := otelcol

NODEJS := instrumentation/nodejs

.PHONY: help deps tools bench-tools images build test test-rust test-nodejs test-unit nodejs-deps nodejs-payload crds golden chart-golden bench fuzz fuzz-deps demo demo-down fmt lint clean-tools

help:
	@echo "make demo   bring up Vispyr on a one-node cluster on this machine with a demo Node.js app (root; make demo-down stops it)"
	@echo "make test   every test, against real etcd, kube-apiserver, Prometheus, trace store, Pyroscope, Node.js"
	@echo "make tools  build the pinned upstream tools into $(CACHE)/tools, linked from .tools/bin"
	@echo "make images build the container images (no Docker, no registry) into $(CACHE)/images"
	@echo "make build  build the workspace"
	@echo "make crds   regenerate crds/ from the Rust types"
	@echo "make golden regenerate the webhook's golden files"
	@echo "make chart-golden  regenerate the chart's golden renders, README values and Grafana copy"
	@echo "make bench  run the benchmarks (results go to docs/benchmarks.md)"

# System packages and toolchains. Idempotent and quick when all is present.
deps:
	@scripts/deps.sh

tools: deps
	@e2e/tools/build.sh $(TOOLS)

bench-tools: deps
	@e2e/tools/build.sh $(BENCH_TOOLS)

# Container images (OCI layouts, no Docker, no registry) into $(CACHE)/images;
# e.g. `make images IMAGES="pause hello"`. See e2e/images/build.sh.
images: deps
	CACHE=$(CACHE) e2e/images/build.sh $(IMAGES)

build: deps
	cargo build --workspace --all-targets --locked

test: test-rust test-nodejs

# nodejs-payload: the end-to-end test packs it into the instrumentation image.
test-rust: tools lint nodejs-payload
	cargo test --workspace --locked --no-fail-fast

# The Node.js preload, against apps started in child processes; then the same
# suites against the built init-container payload, which is what pods get.
test-nodejs: nodejs-payload
	cd $(NODEJS) && npm test && npm run test:payload

nodejs-deps: deps
	cd $(NODEJS) && npm ci --no-audit --no-fund --loglevel=error

# The init-container payload (production dependencies only); prints its size.
nodejs-payload: nodejs-deps
	CACHE=$(CACHE) $(NODEJS)/scripts/build-payload.sh

# Pure-logic tests only, no upstream tools needed.
test-unit: deps
	cargo test --workspace --locked --lib --bins

# crds/ (and the chart's copy) is generated from the Rust types; tests fail
# when either is stale.
crds: deps
	cargo run -q --locked -p vispyr-operator --bin crdgen -- crds
	cp crds/*.yaml charts/vispyr/crds/

# Rewrites the webhook's golden files (operator/tests/golden) from the code:
# review the diff, it is the spec.
golden: deps
	VISPYR_UPDATE_GOLDEN=1 cargo test --locked -p vispyr-operator --test golden

# The chart's copy of config/grafana (Helm reads only files inside the chart),
# its golden renders (charts/vispyr/tests/golden) and the values section of
# its README (from values.schema.json): review the diff.
chart-golden: tools
	rm -rf charts/vispyr/files/grafana
	mkdir -p charts/vispyr/files
	cp -R config/grafana charts/vispyr/files/grafana
	VISPYR_UPDATE_GOLDEN=1 cargo test --locked -p vispyr-e2e --test chart -- renders_match readme_documents

# Benchmarks, each against a baseline run side by side in the same run.
# Results: docs/benchmarks.md.
bench: tools bench-tools nodejs-deps
	cargo bench --locked -p vispyr-operator --bench admission
	cargo bench --locked -p vispyr-node-agent --bench overhead
	cargo bench --locked -p vispyr-gateway --bench ring_vs_collector
	cd $(NODEJS) && npm run bench

# Fuzzing the gateway's receivers (gateway/fuzz) with libFuzzer, each target
# for FUZZ_SECONDS. libFuzzer needs a nightly toolchain (pinned by date) and
# cargo-fuzz (pinned, built once into the cache); the corpus grows in the
# cache, seeded from the committed gateway/fuzz/seeds. A crash is saved in
# gateway/fuzz/artifacts/<target>/ and fails the run. `make test` replays the
# seeds and random mutations of them through the same checks on stable
# (gateway/tests/fuzz.rs).
FUZZ_TOOLCHAIN := nightly-2026-05-20
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ_ROOT := $(CACHE)/cargo-fuzz-$(CARGO_FUZZ_VERSION)
FUZZ_TARGETS := http_protobuf http_json http_gzip grpc trace_split
FUZZ_SECONDS ?= 60

fuzz-deps: deps
	rustup toolchain list | grep -q '^$(FUZZ_TOOLCHAIN)' || rustup toolchain install $(FUZZ_TOOLCHAIN) --profile minimal
	if [[ ! -x $(CARGO_FUZZ_ROOT)/bin/cargo-fuzz ]]; then \
	  CARGO_TARGET_DIR=$(CARGO_FUZZ_ROOT)/build cargo install cargo-fuzz --version $(CARGO_FUZZ_VERSION) \
	    --locked --root $(CARGO_FUZZ_ROOT); \
	  rm -rf $(CARGO_FUZZ_ROOT)/build; \
	fi

fuzz: fuzz-deps
	cd gateway/fuzz && for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(CACHE)/fuzz/corpus/$$t; \
	  PATH=$(CARGO_FUZZ_ROOT)/bin:$$PATH cargo +$(FUZZ_TOOLCHAIN) fuzz run --target-dir $(CACHE)/fuzz/target \
	    $$t $(CACHE)/fuzz/corpus/$$t seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=1024 -malloc_limit_mb=64 -print_final_stats=1; \
	done

# A one-node cluster on this machine (root) with Vispyr installed by Helm and
# the demo app under load, left running; prints what to open. e2e/demo/up.sh.
demo: tools nodejs-payload
	CACHE=$(CACHE) e2e/demo/up.sh

# Stops the demo; the cluster tears down and checks it left nothing behind.
demo-down:
	CACHE=$(CACHE) e2e/demo/down.sh

fmt:
	cargo fmt --all
	cargo fmt --manifest-path ebpf/vispyr-ebpf/Cargo.toml

lint: deps
	cargo fmt --all -- --check
	cargo fmt --manifest-path ebpf/vispyr-ebpf/Cargo.toml -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

clean-tools:
	rm -rf .tools
