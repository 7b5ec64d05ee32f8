// Package importer is ferry's fetch layer: it opens the source of an
// import (a local path or file:// URL, http(s)://, s3://BUCKET/KEY, or "-"
// for stdin) so that the converter reads it straight from the network,
// with no scratch space, each byte fetched once and hashed as it passes.
//
// # API
//
//	Open(ctx, src, o) (Source, error)         // random access: path, file://, http(s)://, s3://
//	                                          // spooled to o.Scratch; "-" (stdin) spooled too
//	OpenStream(ctx, src, o) (*Stream, error)  // in order: "-" or any source; verdict at EOF
//	Source.Complete(ctx) (Digests, error)     // hash what was not read, verify the checksum
//	Stream.Complete(ctx) (Digests, error)     // drain the rest, verify the checksum
//	SniffWrapper, Decompress, Spool           // gzip, xz, zstd, bzip2 (pure Go); spool to disk
//	IsTar, ListOVA, ChooseOVADisk, OVADiskSource
//	ParseChecksum, FindInSumsFile             // "sha256:HEX"; SHA256SUMS (GNU and BSD formats)
//	ChecksumError, ErrSourceChanged, ErrNeedScratch, ErrClosed
//
// A Source satisfies converter/format.File. The caller converts from it,
// then calls Complete and checks its error before it presents the output
// as complete: a *ChecksumError carries the expected and actual digests.
// The ctx given to Open bounds the Source's life; Close must be called.
// Options.Checksum ("ALG:HEX") or Options.ChecksumURL (a sums file, where
// the source's file name is looked up) give the expected digest.
//
// # Remote sources
//
// HTTP and S3 sources are read by a block engine (engine.go): the file is
// cut in blocks (Options.BlockSize, 8 MiB) that Options.Connections
// workers fetch with ranged requests, in file order, into a bounded cache
// (Options.CacheSize, 96 MiB); one goroutine hashes the blocks strictly
// in order (SHA-256, plus the checksum's algorithm on the second core),
// while ReadAt serves the converter from the cache. Random-access formats
// (qcow2, VMDK, VHD, VHDX) read metadata anywhere and data roughly in
// file order; the engine follows:
//
//   - a read of a block in the window [hash cursor, +cache) that is not
//     there yet moves it to the front of the fetch queue and waits;
//   - a small read (≤ 256 KiB) beyond the window, such as a VMDK footer
//     or a grain table, is served by a separate ranged request of aligned
//     4 KiB chunks kept in a metadata cache (CacheSize/8); those bytes are
//     checked against the hashed stream when it gets there;
//   - a large read beyond the window waits while read-ahead moves on;
//   - bytes that were hashed and evicted, when read again, are fetched
//     again (counted in BytesFetched: the 64 KiB segments around a small
//     read, else the block) and checked against the CRC-32C of each
//     segment recorded when it was hashed. (CRC-32C catches a changed
//     object that the ETag pin missed, not a server forging collisions;
//     the published checksum covers the stream.)
//
// Read-ahead evicts only blocks the converter has read in full or left
// behind; otherwise it waits, which bounds memory to about CacheSize ×
// 1.125 without fetching anything twice. CacheSize should exceed the
// converter's reads in flight (workers × chunk) several times. Complete fetches and hashes what
// the converter never read, so the digest always covers the whole file.
//
// A server without Range support is read as one stream, in order (a
// broken transfer restarts from the beginning and skips what was read);
// with Options.Scratch it is spooled to disk instead. Every request is
// pinned to the object first seen (If-Match or If-Unmodified-Since plus
// If-Range for HTTP, If-Match on the ETag for S3), and every response's
// validators, size and range are checked: a change mid-import fails with
// ErrSourceChanged.
//
// # Retries
//
// The fetcher is a retry decorator over a backend (HTTP or S3): every
// error is retried (Options.Retries times per request, exponential backoff
// with jitter, or the server's Retry-After) unless the backend marked it
// permanent: 4xx statuses other than 408/425/429, a changed object, TLS
// verification failures, unknown hosts. A transfer that breaks resumes at
// the exact byte. A request that makes no progress for Options.Timeout is
// abandoned and retried.
//
// # Errors and secrets
//
// Errors wrap with %w and name the stage and the source, e.g.
// "fetch https://host/x.qcow2: range 4194304-8388607: 503 Service
// Unavailable (after 5 retries)". Names and errors never hold secrets: a
// URL's password and credential-looking query parameters (X-Amz-Signature,
// token, ...) are redacted, and headers and auth are never echoed.
//
// The package prints nothing; Options.Progress counts bytes for the CLI to
// render.
package importer
