# Loupe: build, test and run. `make help` lists the targets.
GO      ?= go
export GONOSUMDB := github.com/NVIDIA/go-dcgm
# Tools the tests run for real are built from the Go module proxy into a
# git-ignored cache, once per machine.
CACHE_BIN := $(CURDIR)/.cache/bin
MINIO_VERSION      := v0.0.0-20260212201848-7aac2a2c5b7c
VERSITYGW_VERSION  := v1.8.0
HELM_VERSION       := v3.22.0
PROMTOOL_VERSION   := v0.316.0
export LOUPE_MINIO_BIN     := $(CACHE_BIN)/minio
export LOUPE_VERSITYGW_BIN := $(CACHE_BIN)/versitygw
export LOUPE_HELM_BIN      := $(CACHE_BIN)/helm
export LOUPE_PROMTOOL_BIN  := $(CACHE_BIN)/promtool
# DuckDB (npm @duckdb/node-api) for the test that runs the README's query.
DUCKDB_DIR := $(CURDIR)/.cache/duckdb
export LOUPE_DUCKDB_NODE_PATH := $(DUCKDB_DIR)/node_modules

.PHONY: help build test bench generate lint tools minio versitygw helm promtool duckdb fmt manifests demo ui

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## build loupe-agent and loupe-aggregator into bin/
	$(GO) build -o bin/ ./agent/cmd/loupe-agent ./aggregator/cmd/loupe-aggregator

demo: ## run Loupe end to end on 8 simulated GPUs with planted problems (MinIO when make minio built it); Ctrl-C stops it
	$(GO) build -o .cache/demo/loupe-demo ./deploy/demo
	.cache/demo/loupe-demo $(DEMO_FLAGS)

test: tools ## run every test (as root: real eBPF; real MinIO; headless Chromium)
	$(GO) test -count=1 -timeout 25m ./...

bench: tools ## run the benchmarks
	$(GO) test -run '^$$' -bench . -benchmem -timeout 60m ./...

generate: ## regenerate the eBPF bindings (needs clang, libbpf-dev, bpftool)
	$(GO) generate ./bpf/...

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

fmt: ## gofmt every Go file
	gofmt -w $$(git ls-files '*.go')

tools: minio versitygw helm promtool duckdb ## build the servers and tools the tests use (MinIO, versitygw, helm, promtool; DuckDB from npm)

minio: $(CACHE_BIN)/minio
versitygw: $(CACHE_BIN)/versitygw
helm: $(CACHE_BIN)/helm
promtool: $(CACHE_BIN)/promtool
duckdb: $(DUCKDB_DIR)/node_modules/@duckdb/node-api/package.json

ui: ## regenerate dashboards/static/ui/vendor from the npm lockfile (needs npm); commit the result
	cd dashboards/web && npm ci --no-audit --no-fund && npm run build

manifests: helm ## render deploy/kubernetes/loupe.yaml from the Helm chart
	$(CACHE_BIN)/helm template loupe deploy/helm/loupe --namespace loupe > deploy/kubernetes/loupe.yaml

$(CACHE_BIN)/minio:
	@echo "building MinIO $(MINIO_VERSION) into $(CACHE_BIN) (about 2.5 minutes, once)"
	GOBIN=$(CACHE_BIN) $(GO) install github.com/minio/minio@$(MINIO_VERSION)

$(CACHE_BIN)/helm:
	@echo "building helm $(HELM_VERSION) into $(CACHE_BIN) (a few minutes, once)"
	GOBIN=$(CACHE_BIN) $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

$(CACHE_BIN)/promtool:
	@echo "building promtool $(PROMTOOL_VERSION) into $(CACHE_BIN) (several minutes, once)"
	GOBIN=$(CACHE_BIN) $(GO) install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)

$(DUCKDB_DIR)/node_modules/@duckdb/node-api/package.json: traces/testdata/duckdb/package-lock.json
	@echo "installing DuckDB (npm @duckdb/node-api) into $(DUCKDB_DIR)"
	mkdir -p $(DUCKDB_DIR)
	cp traces/testdata/duckdb/package.json traces/testdata/duckdb/package-lock.json $(DUCKDB_DIR)/
	cd $(DUCKDB_DIR) && npm ci --no-audit --no-fund
	touch $@

$(CACHE_BIN)/versitygw:
	@echo "building versitygw $(VERSITYGW_VERSION) into $(CACHE_BIN) (about 2.5 minutes, once)"
	GOBIN=$(CACHE_BIN) $(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION)
