#include "netfetch/curl_transport.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/file_io.h"
#include "common/unique_fd.h"

namespace ckptfs::netfetch {

namespace {

// Large reads mean fewer callbacks and fewer syscalls for megabyte chunks. curl frees and
// allocates this buffer per transfer (curl_easy_reset), so it stays below the daemon's malloc
// mmap threshold (256 KiB): from the heap it is reused warm instead of mapped, faulted in and
// unmapped for every chunk.
constexpr long kReceiveBufferSize = 128 * 1024;
constexpr long kMaxRedirects = 5;
constexpr long kKeepAliveIdleSeconds = 30;
constexpr long kKeepAliveIntervalSeconds = 10;
// The body of an error response is read and dropped (so the connection can be reused) up to
// this many bytes; past that the transfer is abandoned.
constexpr std::size_t kMaxDiscardedBytes = 64 * 1024;

struct EasyDeleter {
  void operator()(CURL* handle) const { curl_easy_cleanup(handle); }
};
using EasyHandle = std::unique_ptr<CURL, EasyDeleter>;

struct MultiDeleter {
  void operator()(CURLM* handle) const { curl_multi_cleanup(handle); }
};
using MultiHandle = std::unique_ptr<CURLM, MultiDeleter>;

// An easy handle and the multi handle that runs its transfers, which keeps their connections.
// Members are destroyed in reverse: the easy handle (never left attached) before the multi.
struct HandlePair {
  MultiHandle multi;
  EasyHandle easy;

  static HandlePair Make() {
    HandlePair pair{MultiHandle(curl_multi_init()), EasyHandle(curl_easy_init())};
    if (!pair.multi || !pair.easy) return {};
    return pair;
  }
  explicit operator bool() const { return multi && easy; }
};

struct HeaderListDeleter {
  void operator()(curl_slist* list) const { curl_slist_free_all(list); }
};
using HeaderList = std::unique_ptr<curl_slist, HeaderListDeleter>;

// Sets a call's header list on its handle for the length of the call; unsets it before the list
// goes, since the handle (back in the pool) outlives the call.
class CallHeaders {
 public:
  CallHeaders(CURL* handle, HeaderList list) : handle_(handle), list_(std::move(list)) {
    if (list_) curl_easy_setopt(handle_, CURLOPT_HTTPHEADER, list_.get());
  }
  ~CallHeaders() {
    if (list_) curl_easy_setopt(handle_, CURLOPT_HTTPHEADER, nullptr);
  }
  CallHeaders(const CallHeaders&) = delete;
  CallHeaders& operator=(const CallHeaders&) = delete;

 private:
  CURL* const handle_;
  const HeaderList list_;
};

// curl takes whole milliseconds and reads 0 as "no limit": round up so a tiny positive timeout
// stays a limit.
long ToMillis(Duration d) {
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(d).count();
  return static_cast<long>(std::max<std::int64_t>(ms, 1));
}

bool Is2xx(long code) { return code >= 200 && code < 300; }
// What a whole-file GET takes: a body, or 304 Not Modified (no body) when it asked conditionally.
bool IsFileStatus(long code) { return Is2xx(code) || code == 304; }

long ResponseCode(CURL* handle) {
  long code = 0;
  curl_easy_getinfo(handle, CURLINFO_RESPONSE_CODE, &code);
  return code;
}

// Decides once, at the first body byte, whether the body is wanted. Headers of the final
// response are complete by then, so the status code is known.
struct BodyFilter {
  CURL* handle = nullptr;
  bool (*wanted_status)(long) = nullptr;
  bool decided = false;
  bool discarding = false;
  std::size_t discarded = 0;

  // Returns true when `n` bytes should be delivered; false when they are dropped (in which case
  // `*result` is what the callback returns to curl).
  bool Admit(std::size_t n, std::size_t* result) {
    if (!decided) {
      decided = true;
      discarding = !wanted_status(ResponseCode(handle));
    }
    if (!discarding) return true;
    discarded += n;
    *result = discarded > kMaxDiscardedBytes ? 0 : n;
    return false;
  }
};

bool IsChunkStatus(long code) { return code == 200 || code == 206; }
// A range GET takes only 206: a 200 body is the whole object, which must not land in dst.
bool IsPartialContent(long code) { return code == 206; }

// Userdata of WriteToBuffer: a GET into a caller's fixed-size span.
struct BufferSink {
  BodyFilter filter;
  std::span<std::uint8_t> dst;
  const ProgressCallback* progress = nullptr;  // Null or empty: nobody follows the body.
  std::size_t received = 0;
  bool overflow = false;
  bool abandoned = false;  // The progress callback said stop.
};

std::size_t WriteToBuffer(char* data, std::size_t size, std::size_t nmemb, void* userdata) {
  auto* sink = static_cast<BufferSink*>(userdata);
  std::size_t n = size * nmemb;
  std::size_t result = 0;
  if (!sink->filter.Admit(n, &result)) return result;
  if (n > sink->dst.size() - sink->received) {
    sink->overflow = true;
    return 0;  // Anything other than n aborts the transfer with CURLE_WRITE_ERROR.
  }
  std::memcpy(sink->dst.data() + sink->received, data, n);
  sink->received += n;
  if (sink->progress != nullptr && *sink->progress && !(*sink->progress)(sink->received)) {
    sink->abandoned = true;
    return 0;
  }
  return n;
}

// Userdata of WriteToFile.
struct FileSink {
  BodyFilter filter;
  int fd = -1;
  int write_errno = 0;
};

std::size_t WriteToFile(char* data, std::size_t size, std::size_t nmemb, void* userdata) {
  auto* sink = static_cast<FileSink*>(userdata);
  std::size_t n = size * nmemb;
  std::size_t result = 0;
  if (!sink->filter.Admit(n, &result)) return result;
  std::size_t done = 0;
  while (done < n) {
    ssize_t w = ::write(sink->fd, data + done, n - done);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      sink->write_errno = errno;
      return 0;
    }
    done += static_cast<std::size_t>(w);
  }
  return n;
}

std::size_t DiscardBody(char*, std::size_t size, std::size_t nmemb, void*) { return size * nmemb; }

// Userdata of ReadFromSpan / SeekInSpan: the body of a PUT.
struct SpanSource {
  std::span<const std::uint8_t> body;
  std::size_t offset = 0;
};

std::size_t ReadFromSpan(char* buffer, std::size_t size, std::size_t nitems, void* userdata) {
  auto* source = static_cast<SpanSource*>(userdata);
  std::size_t n = std::min(size * nitems, source->body.size() - source->offset);
  std::memcpy(buffer, source->body.data() + source->offset, n);
  source->offset += n;
  return n;
}

// curl rewinds the body when it resends a request, e.g. after a kept-alive connection turned
// out to be closed by the server.
int SeekInSpan(void* userdata, curl_off_t offset, int origin) {
  auto* source = static_cast<SpanSource*>(userdata);
  if (origin != SEEK_SET || offset < 0 || static_cast<std::uint64_t>(offset) > source->body.size())
    return CURL_SEEKFUNC_FAIL;
  source->offset = static_cast<std::size_t>(offset);
  return CURL_SEEKFUNC_OK;
}

// What one transfer did.
struct Outcome {
  CURLcode rc = CURLE_OK;
  long http_code = 0;
  Duration elapsed{};
  std::string error;  // curl's own words when rc != CURLE_OK.
};

// Follows whether a transfer still receives (or sends) bytes, from curl's own counters, and
// whether any byte of the answer has come yet.
class StallWatch {
 public:
  StallWatch(CURL* handle, const RequestLimits& limits, std::chrono::steady_clock::time_point start)
      : handle_(handle),
        stall_timeout_(limits.stall_timeout),
        first_byte_timeout_(limits.first_byte_timeout),
        start_(start),
        last_progress_(start) {}

  // Notes any byte moved since the last call; returns why the transfer is to be given up, or an
  // empty string while it is not.
  std::string Stalled(std::chrono::steady_clock::time_point now) {
    // Without a limit left to watch, curl's counters need not be read on every wake-up.
    if (stall_timeout_ <= Duration::zero() &&
        (answered_ || first_byte_timeout_ <= Duration::zero())) {
      return {};
    }
    curl_off_t body = 0;
    curl_off_t sent = 0;
    long headers = 0;
    curl_easy_getinfo(handle_, CURLINFO_SIZE_DOWNLOAD_T, &body);
    curl_easy_getinfo(handle_, CURLINFO_SIZE_UPLOAD_T, &sent);
    curl_easy_getinfo(handle_, CURLINFO_HEADER_SIZE, &headers);
    const curl_off_t moved = body + sent + headers;
    if (moved != moved_) {
      moved_ = moved;
      last_progress_ = now;
    }
    answered_ = answered_ || body + headers > 0;
    if (!answered_ && first_byte_timeout_ > Duration::zero() &&
        now - start_ >= first_byte_timeout_) {
      return "no answer within " + std::to_string(ToMillis(first_byte_timeout_)) + " ms";
    }
    if (stall_timeout_ > Duration::zero() && now - last_progress_ >= stall_timeout_) {
      return "nothing received for " + std::to_string(ToMillis(stall_timeout_)) + " ms";
    }
    return {};
  }

  // How long a wait may last before Stalled must be asked again, at most `longest`.
  Duration Left(std::chrono::steady_clock::time_point now, Duration longest) const {
    Duration left = longest;
    if (stall_timeout_ > Duration::zero())
      left = std::min(left, last_progress_ + stall_timeout_ - now);
    if (!answered_ && first_byte_timeout_ > Duration::zero()) {
      left = std::min(left, start_ + first_byte_timeout_ - now);
    }
    return std::clamp<Duration>(left, Duration::zero(), longest);
  }

 private:
  CURL* const handle_;
  const Duration stall_timeout_;
  const Duration first_byte_timeout_;
  const std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_progress_;
  curl_off_t moved_ = 0;
  bool answered_ = false;
};

// Runs the transfer set up on `pair.easy` to its end, or until StallWatch gives it up for
// `limits` (stall_timeout, first_byte_timeout; zero: no such limit), which ends it as
// CURLE_OPERATION_TIMEDOUT.
Outcome Perform(const HandlePair& pair, const char* error_buffer, const RequestLimits& limits) {
  // curl_easy_perform waits at most this long between looks as well.
  constexpr Duration kLongestWait = std::chrono::seconds(1);
  CURL* const easy = pair.easy.get();
  CURLM* const multi = pair.multi.get();
  Outcome out;
  const auto start = std::chrono::steady_clock::now();
  if (curl_multi_add_handle(multi, easy) != CURLM_OK) {
    out.rc = CURLE_FAILED_INIT;
    out.error = "curl_multi_add_handle failed";
    return out;
  }
  StallWatch watch(easy, limits, start);
  while (true) {
    int running = 0;
    CURLMcode mc = curl_multi_perform(multi, &running);
    if (mc == CURLM_OK && running == 0) {
      int queued = 0;
      const CURLMsg* msg = curl_multi_info_read(multi, &queued);
      out.rc = msg != nullptr && msg->msg == CURLMSG_DONE ? msg->data.result : CURLE_FAILED_INIT;
      break;
    }
    const auto now = std::chrono::steady_clock::now();
    if (mc == CURLM_OK) {
      if (std::string why = watch.Stalled(now); !why.empty()) {
        out.rc = CURLE_OPERATION_TIMEDOUT;
        out.error = std::move(why);
        break;
      }
    }
    const auto wait = std::chrono::ceil<std::chrono::milliseconds>(watch.Left(now, kLongestWait));
    if (mc == CURLM_OK) {
      // curl shortens the wait to its own next timer.
      mc = curl_multi_poll(multi, nullptr, 0, static_cast<int>(wait.count()), nullptr);
    }
    if (mc != CURLM_OK) {
      out.rc = CURLE_FAILED_INIT;
      out.error = curl_multi_strerror(mc);
      break;
    }
  }
  // Mid-transfer, this closes the connection: it cannot be reused.
  curl_multi_remove_handle(multi, easy);
  out.elapsed = std::chrono::steady_clock::now() - start;
  out.http_code = ResponseCode(easy);
  if (out.rc != CURLE_OK && out.error.empty()) {
    out.error = error_buffer[0] != '\0' ? error_buffer : curl_easy_strerror(out.rc);
  }
  return out;
}

// Maps a failed transfer (rc != CURLE_OK) to a Status. CURLE_OPERATION_TIMEDOUT also reports the
// connect timeout and the low-speed limit; only the call's whole timeout is DeadlineExceeded.
// curl keeps its own millisecond timer, which can fire a hair before our stopwatch reaches the
// timeout, hence the slack; a low-speed abort that close to the timeout left no time anyway.
Status TransferError(const std::string& url, const Outcome& out, Duration timeout) {
  constexpr Duration kTimerSlack = std::chrono::milliseconds(50);
  std::string message = url + ": " + out.error;
  if (out.rc == CURLE_OPERATION_TIMEDOUT && out.elapsed + kTimerSlack >= timeout) {
    return DeadlineExceededError(std::move(message));
  }
  return UnavailableError(std::move(message));
}

// NotFound for 404 and 410: the server is up and says the object is not there.
Status HttpError(const std::string& method, const std::string& url, long code) {
  std::string message = "HTTP " + std::to_string(code) + " from " + method + " " + url;
  if (code == 404 || code == 410) return NotFoundError(std::move(message));
  return UnavailableError(std::move(message));
}

Status NoHandle() { return InternalError("curl could not allocate a handle"); }
Status BadOption(const std::string& url) { return InternalError(url + ": curl refused an option"); }

}  // namespace

struct CurlTransport::Impl {
  explicit Impl(CurlOptions opts) : options(std::move(opts)) {}

  // Hands out an idle pair of handles, or a new one when every pair is busy; an empty pair when
  // curl cannot allocate one.
  HandlePair Borrow() {
    {
      std::lock_guard lock(mu);
      if (!idle.empty()) {
        HandlePair handle = std::move(idle.back());
        idle.pop_back();
        return handle;
      }
    }
    return HandlePair::Make();
  }

  void Return(HandlePair handle) {
    std::lock_guard lock(mu);
    idle.push_back(std::move(handle));
  }

  // Resets `handle` and sets what every request shares. Returns false if curl refused an option.
  bool SetCommonOptions(CURL* handle, const std::string& url, Duration timeout,
                        char* error_buffer) const {
    curl_easy_reset(handle);  // Keeps the handle's live connections.
    error_buffer[0] = '\0';
    const CURLcode results[] = {
        curl_easy_setopt(handle, CURLOPT_URL, url.c_str()),
        curl_easy_setopt(handle, CURLOPT_ERRORBUFFER, error_buffer),
        curl_easy_setopt(handle, CURLOPT_PROTOCOLS_STR, "http,https"),
        curl_easy_setopt(handle, CURLOPT_NOSIGNAL, 1L),
        curl_easy_setopt(handle, CURLOPT_TCP_NODELAY, 1L),
        curl_easy_setopt(handle, CURLOPT_TCP_KEEPALIVE, 1L),
        curl_easy_setopt(handle, CURLOPT_TCP_KEEPIDLE, kKeepAliveIdleSeconds),
        curl_easy_setopt(handle, CURLOPT_TCP_KEEPINTVL, kKeepAliveIntervalSeconds),
        curl_easy_setopt(handle, CURLOPT_CONNECTTIMEOUT_MS, ToMillis(options.connect_timeout)),
        curl_easy_setopt(handle, CURLOPT_LOW_SPEED_LIMIT, options.low_speed_bytes),
        curl_easy_setopt(handle, CURLOPT_LOW_SPEED_TIME,
                         static_cast<long>(options.low_speed_time.count())),
        curl_easy_setopt(handle, CURLOPT_TIMEOUT_MS, ToMillis(timeout)),
        curl_easy_setopt(handle, CURLOPT_BUFFERSIZE, kReceiveBufferSize),
        curl_easy_setopt(handle, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_1_1)),
        // No compression: chunks of model weights do not shrink, and the body must be the bytes.
        curl_easy_setopt(handle, CURLOPT_ACCEPT_ENCODING, nullptr),
        curl_easy_setopt(handle, CURLOPT_FOLLOWLOCATION, 0L),
    };
    const bool own_cas = !options.ca_file.empty();
    const bool cas_set =
        !own_cas ||
        (curl_easy_setopt(handle, CURLOPT_CAINFO, options.ca_file.c_str()) == CURLE_OK &&
         curl_easy_setopt(handle, CURLOPT_CAPATH, nullptr) == CURLE_OK);
    return cas_set && std::all_of(std::begin(results), std::end(results),
                                  [](CURLcode rc) { return rc == CURLE_OK; });
  }

  // Borrows a handle from the pool for the length of one call.
  class Lease {
   public:
    explicit Lease(Impl& impl) : impl_(impl), handle_(impl.Borrow()) {}
    ~Lease() {
      if (handle_) impl_.Return(std::move(handle_));
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    // Null when no handle could be had.
    CURL* get() const { return handle_.easy.get(); }
    const HandlePair& pair() const { return handle_; }

   private:
    Impl& impl_;
    HandlePair handle_;
  };

  // The headers of one call: the header file's, then `ours`. A null list when there are none.
  Result<HeaderList> Headers(std::initializer_list<std::string_view> ours) const {
    std::shared_ptr<const HeaderLines> given =
        options.header_file != nullptr ? options.header_file->Current() : nullptr;
    HeaderList list;
    auto append = [&list](const std::string& line) {
      curl_slist* head = curl_slist_append(list.get(), line.c_str());
      if (head != nullptr && !list) list.reset(head);
      return head != nullptr;
    };
    bool ok = true;
    if (given) {
      for (const std::string& line : *given) ok = ok && append(line);
    }
    for (std::string_view line : ours) ok = ok && append(std::string(line));
    if (!ok) return InternalError("curl_slist_append failed");
    return list;
  }

  // What every request does first: refuses a call with no time left, and sets up the borrowed
  // handle with what every request shares.
  Status Start(const Lease& lease, const std::string& url, Duration timeout,
               char* error_buffer) const {
    if (timeout <= Duration::zero()) return DeadlineExceededError(url + ": no time left to try");
    if (lease.get() == nullptr) return NoHandle();
    if (!SetCommonOptions(lease.get(), url, timeout, error_buffer)) return BadOption(url);
    return Status::Ok();
  }

  // One request under way: a borrowed handle set up for its URL, the buffer of curl's error
  // message, and the request's header lines (the header file's, then `ours`) while it runs.
  class Call {
   public:
    explicit Call(Impl& impl) : impl_(impl), lease_(impl) {}
    Status Start(const std::string& url, Duration timeout,
                 std::initializer_list<std::string_view> ours = {}) {
      CKPTFS_RETURN_IF_ERROR(impl_.Start(lease_, url, timeout, error_buffer_));
      CKPTFS_ASSIGN_OR_RETURN(HeaderList list, impl_.Headers(ours));
      headers_.emplace(lease_.get(), std::move(list));
      return Status::Ok();
    }
    CURL* handle() const { return lease_.get(); }
    Outcome Run(const RequestLimits& limits) {
      return Perform(lease_.pair(), error_buffer_, limits);
    }

   private:
    Impl& impl_;
    Lease lease_;
    char error_buffer_[CURL_ERROR_SIZE];
    std::optional<CallHeaders> headers_;  // Declared last: taken off before the handle goes back.
  };

  CurlOptions options;
  std::mutex mu;
  std::vector<HandlePair> idle;  // Guarded by mu.
};

Result<std::string> CheckCaFile(const std::string& path) {
  CKPTFS_ASSIGN_OR_RETURN(std::string absolute, AbsolutePath(path));
  CKPTFS_ASSIGN_OR_RETURN(std::vector<std::uint8_t> bytes, ReadWholeFile(absolute));
  constexpr std::string_view kBegin = "-----BEGIN CERTIFICATE-----";
  if (std::search(bytes.begin(), bytes.end(), kBegin.begin(), kBegin.end()) == bytes.end()) {
    return InvalidArgumentError(absolute + " holds no PEM certificate (" + std::string(kBegin) +
                                ")");
  }
  return absolute;
}

Result<StoreAccess> OpenStoreAccess(const std::string& header_path,
                                    const std::string& header_option, const std::string& ca_path,
                                    const std::string& ca_option, Clock* clock) {
  StoreAccess access;
  if (!header_path.empty()) {
    Result<std::unique_ptr<HeaderFile>> file = HeaderFile::Open(header_path, clock);
    if (!file.ok()) return file.status().WithContext(header_option);
    access.header_file = std::move(*file);
    access.options.header_file = access.header_file.get();
  }
  if (!ca_path.empty()) {
    Result<std::string> ca_file = CheckCaFile(ca_path);
    if (!ca_file.ok()) return ca_file.status().WithContext(ca_option);
    access.options.ca_file = *ca_file;
  }
  return access;
}

CurlTransport::CurlTransport(CurlOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {
  // One handle up front: the common case needs it anyway, and it is made on the constructing
  // thread rather than on whichever worker calls first.
  HandlePair first = HandlePair::Make();
  if (first) impl_->Return(std::move(first));
}

CurlTransport::~CurlTransport() = default;

Status CurlTransport::Get(const std::string& url, std::span<std::uint8_t> dst,
                          const RequestLimits& limits, const ProgressCallback& progress) {
  return GetInto(url, std::nullopt, dst, limits, progress);
}

Status CurlTransport::GetRange(const std::string& url, std::uint64_t offset,
                               std::span<std::uint8_t> dst, const RequestLimits& limits,
                               const ProgressCallback& progress) {
  if (dst.empty()) return InvalidArgumentError(url + ": empty range requested");
  return GetInto(url, offset, dst, limits, progress);
}

Status CurlTransport::GetInto(const std::string& url, std::optional<std::uint64_t> offset,
                              std::span<std::uint8_t> dst, const RequestLimits& limits,
                              const ProgressCallback& progress) {
  const Duration timeout = limits.timeout;
  Impl::Call call(*impl_);
  CKPTFS_RETURN_IF_ERROR(call.Start(url, timeout));
  CURL* handle = call.handle();
  BufferSink sink;
  sink.filter.handle = handle;
  sink.filter.wanted_status = offset ? IsPartialContent : IsChunkStatus;
  sink.dst = dst;
  sink.progress = &progress;
  curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, WriteToBuffer);
  curl_easy_setopt(handle, CURLOPT_WRITEDATA, &sink);
  // "first-last", both inclusive; curl copies the string.
  const std::string range =
      offset ? std::to_string(*offset) + "-" + std::to_string(*offset + dst.size() - 1) : "";
  if (offset && curl_easy_setopt(handle, CURLOPT_RANGE, range.c_str()) != CURLE_OK) {
    return BadOption(url);
  }
  const std::string what = offset ? "bytes " + range + " of " + url : url;

  Outcome out = call.Run(limits);
  const std::string n = std::to_string(dst.size());
  if (sink.abandoned) {
    return DataLossError("transfer of " + what + " abandoned by the caller after " +
                         std::to_string(sink.received) + " bytes");
  }
  if (sink.overflow) return DataLossError("body longer than " + n + " bytes from " + what);
  if (out.rc != CURLE_OK && !sink.filter.discarding) {
    if (out.rc == CURLE_PARTIAL_FILE) {
      return DataLossError("short body: got " + std::to_string(sink.received) + " of " + n +
                           " bytes from " + what + " (" + out.error + ")");
    }
    return TransferError(url, out, timeout);
  }
  if (offset && out.http_code == 200) {
    return UnavailableError("HTTP 200 instead of 206 from GET " + what +
                            ": the server ignored the Range header");
  }
  if (!sink.filter.wanted_status(out.http_code)) return HttpError("GET", url, out.http_code);
  if (sink.received < dst.size()) {
    return DataLossError("short body: got " + std::to_string(sink.received) + " of " + n +
                         " bytes from " + what);
  }
  return Status::Ok();
}

Status CurlTransport::Put(const std::string& url, std::span<const std::uint8_t> body,
                          Duration timeout) {
  Impl::Call call(*impl_);
  // Without "Expect:" curl sends "Expect: 100-continue" for large bodies and waits a second for
  // an answer that nginx does not need to give.
  CKPTFS_RETURN_IF_ERROR(call.Start(url, timeout, {"Expect:"}));
  CURL* handle = call.handle();
  SpanSource source{body, 0};
  curl_easy_setopt(handle, CURLOPT_UPLOAD, 1L);
  curl_easy_setopt(handle, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(body.size()));
  curl_easy_setopt(handle, CURLOPT_READFUNCTION, ReadFromSpan);
  curl_easy_setopt(handle, CURLOPT_READDATA, &source);
  curl_easy_setopt(handle, CURLOPT_SEEKFUNCTION, SeekInSpan);
  curl_easy_setopt(handle, CURLOPT_SEEKDATA, &source);
  curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, DiscardBody);

  Outcome out = call.Run(RequestLimits{});
  if (out.rc != CURLE_OK) return TransferError(url, out, timeout);
  if (!Is2xx(out.http_code)) return HttpError("PUT", url, out.http_code);
  return Status::Ok();
}

Result<std::uint64_t> CurlTransport::Head(const std::string& url, const RequestLimits& limits) {
  Impl::Call call(*impl_);
  CKPTFS_RETURN_IF_ERROR(call.Start(url, limits.timeout));
  CURL* handle = call.handle();
  curl_easy_setopt(handle, CURLOPT_NOBODY, 1L);
  Outcome out = call.Run(limits);
  if (out.rc != CURLE_OK) return TransferError(url, out, limits.timeout);
  if (out.http_code == 405 || out.http_code == 501) {
    return FailedPreconditionError("HTTP " + std::to_string(out.http_code) + " from HEAD " + url +
                                   ": the server does not answer HEAD");
  }
  if (!Is2xx(out.http_code)) return HttpError("HEAD", url, out.http_code);
  curl_off_t length = -1;
  if (curl_easy_getinfo(handle, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length) != CURLE_OK ||
      length < 0) {
    return UnavailableError("no Content-Length in the answer to HEAD " + url);
  }
  return static_cast<std::uint64_t>(length);
}

namespace {

// One header of the final response (those of a redirect before it are dropped), caught by
// KeepHeader.
struct CaughtHeader {
  std::string_view name;  // Lower case, with its colon: "etag:".
  std::string value;      // Empty: not in the answer.
};

std::size_t KeepHeader(char* data, std::size_t size, std::size_t nmemb, void* userdata) {
  auto* header = static_cast<CaughtHeader*>(userdata);
  const std::size_t n = size * nmemb;
  std::string_view line(data, n);
  if (line.rfind("HTTP/", 0) == 0) header->value.clear();  // A new response begins.
  const std::string_view name = header->name;
  if (line.size() > name.size() &&
      std::equal(name.begin(), name.end(), line.begin(),
                 [](char a, char b) { return a == std::tolower(static_cast<unsigned char>(b)); })) {
    line.remove_prefix(name.size());
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    while (!line.empty() && (line.back() == '\r' || line.back() == '\n' || line.back() == ' ')) {
      line.remove_suffix(1);
    }
    header->value.assign(line);
  }
  return n;
}

}  // namespace

Result<std::chrono::seconds> CurlTransport::Age(const std::string& url, Duration timeout) {
  Impl::Call call(*impl_);
  CKPTFS_RETURN_IF_ERROR(call.Start(url, timeout));
  CURL* handle = call.handle();
  CaughtHeader date{"date:", {}};
  curl_easy_setopt(handle, CURLOPT_NOBODY, 1L);
  curl_easy_setopt(handle, CURLOPT_FILETIME, 1L);
  curl_easy_setopt(handle, CURLOPT_HEADERFUNCTION, KeepHeader);
  curl_easy_setopt(handle, CURLOPT_HEADERDATA, &date);
  Outcome out = call.Run(RequestLimits{timeout});
  // The handle outlives `date`; its next user's SetCommonOptions resets the rest.
  curl_easy_setopt(handle, CURLOPT_HEADERDATA, nullptr);
  if (out.rc != CURLE_OK) return TransferError(url, out, timeout);
  if (!Is2xx(out.http_code)) return HttpError("HEAD", url, out.http_code);
  curl_off_t modified = -1;
  if (curl_easy_getinfo(handle, CURLINFO_FILETIME_T, &modified) != CURLE_OK || modified < 0) {
    return UnavailableError("no Last-Modified in the answer to HEAD " + url);
  }
  std::int64_t now = date.value.empty() ? -1 : curl_getdate(date.value.c_str(), nullptr);
  if (now < 0) {
    now = std::chrono::duration_cast<std::chrono::seconds>(
              std::chrono::system_clock::now().time_since_epoch())
              .count();
  }
  return std::chrono::seconds(now - modified);
}

Status CurlTransport::Delete(const std::string& url, Duration timeout) {
  Impl::Call call(*impl_);
  CKPTFS_RETURN_IF_ERROR(call.Start(url, timeout));
  CURL* handle = call.handle();
  // One copy of the name, kept whole: built into messages piece by piece, the compiler's
  // immediates left words in the binary that lintian takes for misspellings.
  static constexpr char kMethod[] = "DELETE";
  curl_easy_setopt(handle, CURLOPT_CUSTOMREQUEST, kMethod);
  curl_easy_setopt(handle, CURLOPT_NOBODY, 1L);
  Outcome out = call.Run(RequestLimits{timeout});
  if (out.rc != CURLE_OK) return TransferError(url, out, timeout);
  Status refused = HttpError(kMethod, url, out.http_code);
  if (out.http_code == 405 || out.http_code == 501) {
    return FailedPreconditionError(refused.message() + ": the server does not take " + kMethod);
  }
  if (!Is2xx(out.http_code)) return refused;
  return Status::Ok();
}

Result<FileFetch> CurlTransport::GetToFile(const std::string& url, const std::string& path,
                                           Duration timeout, const FileVersion& have) {
  // The ETag when there is one: If-Modified-Since is only "not newer than", which a file put back
  // with an older time (a rollback that keeps times) would pass on some servers.
  const bool conditional = !have.etag.empty() || have.last_modified >= 0;
  const std::string if_none_match = "If-None-Match: " + have.etag;
  Impl::Call call(*impl_);
  CKPTFS_RETURN_IF_ERROR(have.etag.empty() ? call.Start(url, timeout)
                                           : call.Start(url, timeout, {if_none_match}));
  CURL* handle = call.handle();
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) return ErrnoStatus(errno, "open " + path);
  FileSink sink;
  sink.filter.handle = handle;
  sink.filter.wanted_status = IsFileStatus;
  sink.fd = fd.get();
  // An index may sit behind a redirect (a CDN, a "latest" link); chunk GETs never follow one.
  curl_easy_setopt(handle, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(handle, CURLOPT_MAXREDIRS, kMaxRedirects);
  curl_easy_setopt(handle, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, WriteToFile);
  curl_easy_setopt(handle, CURLOPT_WRITEDATA, &sink);
  CaughtHeader etag{"etag:", {}};
  curl_easy_setopt(handle, CURLOPT_HEADERFUNCTION, KeepHeader);
  curl_easy_setopt(handle, CURLOPT_HEADERDATA, &etag);
  curl_easy_setopt(handle, CURLOPT_FILETIME, 1L);
  if (have.etag.empty() && have.last_modified >= 0) {
    curl_easy_setopt(handle, CURLOPT_TIMECONDITION, static_cast<long>(CURL_TIMECOND_IFMODSINCE));
    curl_easy_setopt(handle, CURLOPT_TIMEVALUE_LARGE, static_cast<curl_off_t>(have.last_modified));
  }

  Outcome out = call.Run(RequestLimits{});
  curl_off_t filetime = -1;
  curl_easy_getinfo(handle, CURLINFO_FILETIME_T, &filetime);
  // The handle outlives `etag`; its next user's SetCommonOptions resets the rest.
  curl_easy_setopt(handle, CURLOPT_HEADERDATA, nullptr);
  if (sink.write_errno != 0) return ErrnoStatus(sink.write_errno, "write " + path);
  if (out.rc != CURLE_OK && !sink.filter.discarding) return TransferError(url, out, timeout);
  // A 304 to a request that asked for nothing conditionally would leave the caller no file.
  if (!IsFileStatus(out.http_code) || (out.http_code == 304 && !conditional)) {
    return HttpError("GET", url, out.http_code);
  }
  FileFetch fetch;
  fetch.version = {etag.value, filetime};
  if (out.http_code == 304) {
    fetch.not_modified = true;
    ::unlink(path.c_str());
    return fetch;
  }
  // Closed here, not by the destructor, so that a deferred write error is reported.
  if (::close(fd.Release()) != 0) return ErrnoStatus(errno, "close " + path);
  return fetch;
}

}  // namespace ckptfs::netfetch
