# imgmesh: `make run` starts a node with the embedded defaults, `make test`
# runs everything CI runs. Go 1.26.

GO          ?= go
BIN         := $(CURDIR)/bin
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -X main.version=$(VERSION)
FUZZTIME    ?= 20s
# The OCI distribution-spec conformance program (run by the tests when
# IMGMESH_CONFORMANCE names it).
CONFORMANCE_PKG     := github.com/opencontainers/distribution-spec/conformance
CONFORMANCE_VERSION := v0.0.0-20260831232431-97274622c111

.PHONY: all build run test bench bench-mesh bench-go fuzz vet fmt fmt-check clean

all: build

## build: the binary at bin/imgmesh
build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/imgmesh ./cmd/imgmesh

## run: build, then serve with the defaults (data in ./data, API on 127.0.0.1:5000)
run: build
	$(BIN)/imgmesh serve $(ARGS)

$(BIN)/conformance:
	GOBIN=$(BIN) $(GO) install $(CONFORMANCE_PKG)@$(CONFORMANCE_VERSION)

## test: format check, vet, then every test with the race detector
test: $(BIN)/conformance fmt-check vet
	PATH="$(BIN):$$PATH" IMGMESH_CONFORMANCE=$(BIN)/conformance \
		$(GO) test -race -count=1 -timeout 14m ./...

## bench: serving throughput and node memory against docker-registry and
## nginx, on 127.0.0.1 (bench/serve; e.g. BENCH_ARGS="-size 256MiB -runs 3")
bench: build
	$(GO) run ./bench/serve -imgmesh $(BIN)/imgmesh $(BENCH_ARGS)
	$(GO) run ./bench/mesh -imgmesh $(BIN)/imgmesh $(MESH_ARGS)

## bench-mesh: peer transfer, miss and lookup latency of a fleet on 127.0.0.1
## (bench/mesh; e.g. MESH_ARGS="-size 256MiB")
bench-mesh: build
	$(GO) run ./bench/mesh -imgmesh $(BIN)/imgmesh $(MESH_ARGS)

## bench-go: the Go micro-benchmarks (3 iterations each)
bench-go:
	$(GO) test -run '^$$' -bench . -benchtime 3x ./...

## fuzz: each fuzz target of registryapi for $(FUZZTIME)
fuzz:
	@targets=$$($(GO) test -list '^Fuzz' ./registryapi/ | grep '^Fuzz'); \
	if [ -z "$$targets" ]; then echo "no fuzz targets in ./registryapi"; exit 1; fi; \
	for f in $$targets; do \
		echo "fuzz $$f ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) ./registryapi/ || exit 1; \
	done

vet:
	$(GO) vet ./...

## fmt: gofmt every Go file in place
fmt:
	gofmt -w .

## fmt-check: fail when a Go file is not gofmt-formatted
fmt-check:
	@out=$$(gofmt -l .); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

clean:
	rm -rf $(BIN) ./data
