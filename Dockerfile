# Static ferry binary on a minimal base. Build: docker build -t ferry .
FROM golang:1.26-bookworm AS build
# libdeflate: ~3x faster inflate for zlib qcow2 and streamOptimized VMDK,
# linked statically (netgo/osusergo keep glibc's NSS out of the binary).
RUN apt-get update && apt-get install -y --no-install-recommends libdeflate-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=1 go build -trimpath -tags libdeflate,netgo,osusergo \
      -ldflags "-s -w -X main.version=${VERSION} -linkmode external -extldflags -static" \
      -o /out/ferry ./cmd/ferry \
 && /out/ferry --version

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ferry /usr/local/bin/ferry
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ferry"]
