# ferry — see README.md.
GO        ?= go
BIN       ?= bin/ferry
FERRY_TOOLS ?= $(CURDIR)/.cache/tools
export FERRY_TOOLS
FUZZTIME  ?= 30s
GOTEST_FLAGS ?= -count=1 -timeout 40m
# libdeflate (cgo) inflates ~3x faster than compress/flate; used when its
# header is installed (make deps installs libdeflate-dev), pure Go otherwise.
TAGS      ?= $(shell [ -f /usr/include/libdeflate.h ] && echo libdeflate)

.PHONY: all build test test-short deps tools demo bench fuzz lint clean

all: build

build:
	$(GO) build -trimpath -tags "$(TAGS)" -o $(BIN) ./cmd/ferry

# deps: Debian packages the tests and demo need (apt when root).
deps:
	./scripts/install-deps.sh

# tools: Go-built test peers (MinIO, kube-apiserver) into $(FERRY_TOOLS).
tools:
	./scripts/install-deps.sh --tools

# test: everything, against the real peers. Installs what is missing;
# under CI=true a missing tool fails the run.
test: tools lint
	$(GO) test $(GOTEST_FLAGS) -tags "$(TAGS)" ./...
	# The pure-Go decompression fallback (static builds without cgo).
	$(GO) test $(GOTEST_FLAGS) ./converter/format/ ./converter/qcow2/ ./converter/vmdk/

# demo: the README's first command: a real conversion end to end on an
# image generated here (no cluster, no network).
demo: deps build
	./scripts/demo.sh

bench: deps build
	$(GO) run ./internal/bench $(BENCH_FLAGS)

fuzz:
	TAGS="$(TAGS)" ./scripts/fuzz.sh $(FUZZTIME)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin .cache/bench
