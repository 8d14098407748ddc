# imgmesh: `make run` starts a node with the embedded defaults, `make test`
# runs everything CI runs. Go 1.26.

GO          ?= go
BIN         := $(CURDIR)/bin
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -X main.version=$(VERSION)
FUZZTIME    ?= 20s
# make install: DESTDIR stages the files (packages, tests); PREFIX holds the binary.
PREFIX      ?= /usr/local
UNITDIR     ?= /etc/systemd/system
SYSUSERSDIR ?= /etc/sysusers.d
# The OCI distribution-spec conformance program (run by the tests when
# IMGMESH_CONFORMANCE names it).
CONFORMANCE_PKG     := github.com/opencontainers/distribution-spec/conformance
CONFORMANCE_VERSION := v0.0.0-20260831232431-97274622c111

.PHONY: all build run test bench bench-mesh bench-fleet bench-go fuzz vet fmt fmt-check clean install

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

## bench-fleet: the rollout benchmark (imgmesh bench fleet): as root in network
## namespaces with links shaped by tc, else the loopback simulation
## (e.g. FLEET_ARGS="--nodes 6 --size 100MB"); results in bench/results/fleet
bench-fleet: build
	@if [ "$$(id -u)" = 0 ]; then \
		$(BIN)/imgmesh bench fleet $(FLEET_ARGS); \
	else \
		echo "bench-fleet: not root, so running the loopback SIMULATION (no tc shaping); run as root for the real benchmark"; \
		$(BIN)/imgmesh bench fleet --loopback $(FLEET_ARGS); \
	fi

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

## install: bin/imgmesh to $(PREFIX)/bin, the systemd unit, its system user
## and /etc/imgmesh/config.yaml (an existing one is kept); DESTDIR stages it
install: build
	install -D -m 0755 $(BIN)/imgmesh $(DESTDIR)$(PREFIX)/bin/imgmesh
	sed 's|/usr/local/bin/imgmesh|$(PREFIX)/bin/imgmesh|' packaging/imgmesh.service > $(BIN)/imgmesh.service
	install -D -m 0644 $(BIN)/imgmesh.service $(DESTDIR)$(UNITDIR)/imgmesh.service
	install -D -m 0644 packaging/imgmesh.sysusers $(DESTDIR)$(SYSUSERSDIR)/imgmesh.conf
	@if [ -e $(DESTDIR)/etc/imgmesh/config.yaml ]; then \
		echo "kept $(DESTDIR)/etc/imgmesh/config.yaml"; \
	else \
		install -D -m 0644 packaging/config.yaml $(DESTDIR)/etc/imgmesh/config.yaml; \
		echo "installed $(DESTDIR)/etc/imgmesh/config.yaml"; \
	fi
	@echo "then: systemd-sysusers && systemctl daemon-reload && systemctl enable --now imgmesh"

clean:
	rm -rf $(BIN) ./data
