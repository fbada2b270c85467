// CurlTransport: Transport over libcurl (the OpenSSL build), with connections kept alive.
//
// Keeps a pool of easy handles, each with a multi handle of its own that runs its transfers; a
// call borrows one for its duration, so a handle is never used by two threads at once and each
// keeps its connections to the nodes it talked to. The transfer is driven by our own loop rather
// than curl_easy_perform, whose waits only end at curl's own timers (a second apart while a
// transfer is idle), so that a stalled request (RequestLimits::stall_timeout) is given up on time.
// REQUIRES: curl_global_init() was called once by main before any thread started.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "common/clock.h"
#include "common/result.h"
#include "netfetch/header_file.h"
#include "netfetch/transport.h"

namespace ckptfs::netfetch {

struct CurlOptions {
  Duration connect_timeout = std::chrono::seconds(3);
  // A transfer slower than low_speed_bytes per second for low_speed_time is abandoned, so a node
  // that hangs mid-body is left for the next replica long before the read's deadline.
  long low_speed_bytes = 64 * 1024;
  std::chrono::seconds low_speed_time{3};
  // Headers every request carries besides its own (credentials); null: none. Not owned; outlives
  // the transport.
  HeaderFile* header_file = nullptr;
  // PEM file of the certificate authorities that https servers are checked against, instead of
  // the system's (CheckCaFile); empty: the system's.
  std::string ca_file;
};

// Checks that `path` can be read and holds at least one PEM certificate; returns it absolute (a
// mount that goes to the background leaves the working directory). InvalidArgument or the errno
// otherwise, naming the file.
Result<std::string> CheckCaFile(const std::string& path);

// What a transport needs for a store that wants credentials or has its own CA.
struct StoreAccess {
  std::unique_ptr<HeaderFile> header_file;  // Null without one; options.header_file points here.
  CurlOptions options;
};

// Opens the header file at `header_path` and checks the CA file at `ca_path` (empty: none).
// Errors carry the option that named the file, as the user spelled it (`header_option`,
// `ca_option`).
Result<StoreAccess> OpenStoreAccess(const std::string& header_path,
                                    const std::string& header_option, const std::string& ca_path,
                                    const std::string& ca_option, Clock* clock);

class CurlTransport final : public Transport {
 public:
  explicit CurlTransport(CurlOptions options = {});
  ~CurlTransport() override;

  using Transport::Get;
  using Transport::GetRange;
  Status Get(const std::string& url, std::span<std::uint8_t> dst, const RequestLimits& limits,
             const ProgressCallback& progress) override;
  // CURLOPT_RANGE; the status is checked before any body byte is delivered, so a 200 (the whole
  // object) never lands in dst.
  Status GetRange(const std::string& url, std::uint64_t offset, std::span<std::uint8_t> dst,
                  const RequestLimits& limits, const ProgressCallback& progress) override;
  Status Put(const std::string& url, std::span<const std::uint8_t> body, Duration timeout) override;
  using Transport::Head;
  Result<std::uint64_t> Head(const std::string& url, const RequestLimits& limits) override;
  Result<std::chrono::seconds> Age(const std::string& url, Duration timeout) override;
  Status Delete(const std::string& url, Duration timeout) override;
  using Transport::GetToFile;
  Result<FileFetch> GetToFile(const std::string& url, const std::string& path, Duration timeout,
                              const FileVersion& have) override;

 private:
  // One GET into dst; a range GET from `offset` when given.
  Status GetInto(const std::string& url, std::optional<std::uint64_t> offset,
                 std::span<std::uint8_t> dst, const RequestLimits& limits,
                 const ProgressCallback& progress);

  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ckptfs::netfetch
