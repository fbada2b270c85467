// Transport: one HTTP request against one URL, and nothing more.
//
// All libcurl code lives behind this interface (CurlTransport); retries, replica order and digest
// checks live above it (RetryingFetcher), where tests drive them with a scripted fake transport.
// Thread safety: implementations must allow concurrent calls from many threads.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include "common/clock.h"
#include "common/result.h"
#include "common/status.h"

namespace ckptfs::netfetch {

// Told how far a GET has got: called on the thread that made the call, each time more body bytes
// have landed in dst, with the running total (bytes of dst[0, received) are final), so that a
// caller can hash them while they are still in the CPU cache. Returning false abandons the
// transfer: the call then fails with DataLoss ("abandoned by the caller") and writes nothing more
// into dst. A transport may call it any number of times; `received` only grows.
using ProgressCallback = std::function<bool(std::size_t received)>;

// What one request may take.
struct RequestLimits {
  Duration timeout{};  // The whole request.
  // Given up as Unavailable once no byte has arrived for this long, whether the answer has not
  // started (connecting included) or stops within the body; zero: no such limit, only the
  // transport's own low-speed limit. Meant for a caller that has another server to turn to:
  // a server that has stopped answering is then left after this, not after the low-speed
  // limit's seconds.
  Duration stall_timeout{};
  // Given up as Unavailable when no byte of the answer (its status line included) has arrived
  // this long after the request started, connecting included; zero: no such limit. Shorter than
  // stall_timeout, it leaves a server that has stopped answering about as soon as one that
  // answers would have answered: for a caller that knows how soon the server usually answers.
  Duration first_byte_timeout{};
};

// How a server named the version of a file it sent (validators, RFC 9110): an earlier download's
// are sent back to ask for the file only if it changed.
struct FileVersion {
  std::string etag;                 // The ETag, quotes included; empty: none.
  std::int64_t last_modified = -1;  // Last-Modified, seconds since the epoch; -1: none.
};

// What a GetToFile brought.
struct FileFetch {
  bool not_modified = false;  // 304: the caller's copy is current; nothing was written.
  FileVersion version;        // Of the file written (or, after a 304, as the server says now).
};

class Transport {
 public:
  virtual ~Transport() = default;

  // GETs `url` into `dst`; the body must be exactly dst.size() bytes. `progress` (may be empty)
  // follows the body as it lands, see ProgressCallback.
  // Errors: NotFound (HTTP 404 or 410), Unavailable (cannot connect, another HTTP error status,
  // connection reset, too slow: below the low-speed limit, or stalled past
  // limits.stall_timeout), DataLoss (body shorter or longer
  // than dst, or abandoned by `progress`), DeadlineExceeded (the whole request took longer than
  // limits.timeout). The message names the URL and the cause. Bytes of dst past what `progress`
  // was told are unspecified.
  virtual Status Get(const std::string& url, std::span<std::uint8_t> dst,
                     const RequestLimits& limits, const ProgressCallback& progress) = 0;
  Status Get(const std::string& url, std::span<std::uint8_t> dst, Duration timeout,
             const ProgressCallback& progress) {
    return Get(url, dst, RequestLimits{timeout}, progress);
  }
  Status Get(const std::string& url, std::span<std::uint8_t> dst, Duration timeout) {
    return Get(url, dst, RequestLimits{timeout}, ProgressCallback());
  }

  // GETs bytes [offset, offset + dst.size()) of `url` into `dst` with one request carrying
  // "Range: bytes=offset-(offset + dst.size() - 1)". The answer must be 206 Partial Content with
  // exactly dst.size() body bytes. A 200 means the server ignored the Range header: Unavailable
  // (saying so), and nothing of that body lands in dst. Other errors and `progress` as for Get.
  // InvalidArgument for an empty dst.
  virtual Status GetRange(const std::string& url, std::uint64_t offset, std::span<std::uint8_t> dst,
                          const RequestLimits& limits, const ProgressCallback& progress) = 0;
  Status GetRange(const std::string& url, std::uint64_t offset, std::span<std::uint8_t> dst,
                  Duration timeout, const ProgressCallback& progress) {
    return GetRange(url, offset, dst, RequestLimits{timeout}, progress);
  }
  Status GetRange(const std::string& url, std::uint64_t offset, std::span<std::uint8_t> dst,
                  Duration timeout) {
    return GetRange(url, offset, dst, RequestLimits{timeout}, ProgressCallback());
  }

  // PUTs `body` to `url` (a WebDAV-style server such as nginx with dav_methods PUT). Any 2xx is
  // success; 404 and 410 are NotFound, every other status Unavailable, with the status.
  virtual Status Put(const std::string& url, std::span<const std::uint8_t> body,
                     Duration timeout) = 0;

  // Asks for `url` with HEAD: the size of the object there (its Content-Length), so that a
  // publisher can leave an object of a content-addressed name that a node already holds.
  // Errors: NotFound for HTTP 404 or 410; FailedPrecondition for 405 or 501 (a server that serves
  // GETs but not HEAD: it did answer); Unavailable for any other status that is not 2xx, a
  // 2xx without a length, or a failed transfer (limits.stall_timeout and first_byte_timeout as
  // for Get); DeadlineExceeded as for Get.
  virtual Result<std::uint64_t> Head(const std::string& url, const RequestLimits& limits) = 0;
  Result<std::uint64_t> Head(const std::string& url, Duration timeout) {
    return Head(url, RequestLimits{timeout});
  }

  // How long ago, by the server's own clock, the object at `url` last changed: its Date minus its
  // Last-Modified, from a HEAD; without a Date header, this machine's time instead. Comparing the
  // server's two times makes the age independent of how far this machine's clock is off. Errors:
  // NotFound for HTTP 404 or 410; Unavailable for another status that is not 2xx, an answer
  // without Last-Modified, or a failed transfer; DeadlineExceeded after `timeout`.
  virtual Result<std::chrono::seconds> Age(const std::string& url, Duration timeout) = 0;

  // DELETEs `url` (a WebDAV-style server such as nginx with dav_methods PUT DELETE). Any 2xx is
  // success; NotFound for 404 or 410; FailedPrecondition for 405 or 501 (the server does not
  // take DELETE); Unavailable for any other status or a failed transfer.
  virtual Status Delete(const std::string& url, Duration timeout) = 0;

  // GETs `url` whole into the file `path` (created or truncated), for indexes served over HTTP.
  // With the version of a copy the caller has (`have`), the file is asked for only if it changed:
  // If-None-Match with its ETag when it has one (an exact match, whatever the file's times),
  // else If-Modified-Since with its Last-Modified. A 304 answer writes nothing, leaves no file at
  // `path`, and says not_modified. Errors as for Get, and those of writing the file.
  virtual Result<FileFetch> GetToFile(const std::string& url, const std::string& path,
                                      Duration timeout, const FileVersion& have) = 0;
  Result<FileFetch> GetToFile(const std::string& url, const std::string& path, Duration timeout) {
    return GetToFile(url, path, timeout, FileVersion{});
  }
};

}  // namespace ckptfs::netfetch
