// Transport: one HTTP request against one URL, and nothing more.
//
// All libcurl code lives behind this interface (CurlTransport); retries, replica order and digest
// checks live above it (RetryingFetcher), where tests drive them with a scripted fake transport.
// Thread safety: implementations must allow concurrent calls from many threads.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "common/clock.h"
#include "common/status.h"

namespace ckptfs::netfetch {

class Transport {
 public:
  virtual ~Transport() = default;

  // GETs `url` into `dst`; the body must be exactly dst.size() bytes.
  // Errors: Unavailable (cannot connect, HTTP error status, connection reset, too slow: below
  // the low-speed limit), DataLoss (body shorter or longer than dst), DeadlineExceeded (the whole
  // request took longer than `timeout`). The message names the URL and the cause.
  virtual Status Get(const std::string& url, std::span<std::uint8_t> dst, Duration timeout) = 0;

  // PUTs `body` to `url` (a WebDAV-style server such as nginx with dav_methods PUT). Any 2xx is
  // success; everything else is Unavailable with the status.
  virtual Status Put(const std::string& url, std::span<const std::uint8_t> body,
                     Duration timeout) = 0;

  // GETs `url` whole into the file `path` (created or truncated), for indexes served over HTTP.
  virtual Status GetToFile(const std::string& url, const std::string& path, Duration timeout) = 0;
};

}  // namespace ckptfs::netfetch
