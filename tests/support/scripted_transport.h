// ScriptedTransport: a netfetch::Transport whose answers a test writes down in advance.
//
// Per URL a test queues one-shot responses (Enqueue, used first, in order) and/or sets a fixed
// response for every later call (SetResponse). A response is either body bytes or an error
// Status, and may carry a fake duration: the FakeClock given to the constructor is advanced by
// it, and a duration longer than the call's timeout behaves like a real timeout (the clock moves
// by the timeout and the call returns DeadlineExceeded). Bodies are checked against the size the
// caller expects exactly as CurlTransport does (short or long → DataLoss), so the fetcher sees
// the real contract. A URL with no script answers like a missing object: HTTP 404, Unavailable.
// Every call is counted per URL, with the timeout (and stall timeout) it was given and, for
// GetRange, its range. A response made with Silent() or SlowToAnswer() sends nothing for its
// delay: a call with a shorter stall timeout gives up after that (Unavailable) as CurlTransport
// does.
//
// GetRange answers from the same script: the response body is the whole object, and the call
// gets bytes [offset, offset + dst.size()) of it, as nginx would (206); a range past the end of
// the body is DataLoss (short body). A response made with IgnoringRange() answers GetRange like
// a server that ignores the Range header (Unavailable, nothing written). Bodies are written into
// dst in pieces of SetPieceSize() bytes (default: all at once), with the progress callback
// called after each piece; a callback returning false stops the call with DataLoss, as
// CurlTransport does.
// Thread safety: every method may be called from many threads at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "netfetch/transport.h"
#include "tests/support/fake_clock.h"

namespace ckptfs::testing {

struct ScriptedResponse {
  Status status;  // OK: the answer is `body`.
  std::vector<std::uint8_t> body;
  Duration delay{0};           // How long the fake request takes.
  bool ignores_range = false;  // GetRange gets a 200: Unavailable.
  // Nothing arrives during `delay`: a call whose stall timeout is shorter ends after that.
  bool silent = false;
  // With an OK status: after this many body bytes of the call landed in dst, the connection
  // "breaks" (Unavailable). Lets a test cut a transfer in the middle of a block.
  std::optional<std::size_t> break_after;

  static ScriptedResponse Body(std::vector<std::uint8_t> bytes, Duration delay = Duration{0}) {
    return {Status::Ok(), std::move(bytes), delay, false, false, std::nullopt};
  }
  static ScriptedResponse Error(Status status, Duration delay = Duration{0}) {
    return {std::move(status), {}, delay, false, false, std::nullopt};
  }
  static ScriptedResponse IgnoringRange(std::vector<std::uint8_t> bytes) {
    return {Status::Ok(), std::move(bytes), Duration{0}, true, false, std::nullopt};
  }
  static ScriptedResponse BreakingAfter(std::vector<std::uint8_t> bytes, std::size_t n) {
    return {Status::Ok(), std::move(bytes), Duration{0}, false, false, n};
  }
  // A server that has stopped answering: nothing for `delay`, then `status` (say, the
  // transport's low-speed abort).
  static ScriptedResponse Silent(Duration delay, Status status) {
    return {std::move(status), {}, delay, false, true, std::nullopt};
  }
  // A server slow to start its answer: nothing for `delay`, then the body.
  static ScriptedResponse SlowToAnswer(std::vector<std::uint8_t> bytes, Duration delay) {
    return {Status::Ok(), std::move(bytes), delay, false, true, std::nullopt};
  }
};

// The range of one GetRange call: bytes [offset, offset + length).
struct ScriptedRange {
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  friend bool operator==(const ScriptedRange&, const ScriptedRange&) = default;
};

class ScriptedTransport final : public netfetch::Transport {
 public:
  // `clock` may be null when no response carries a delay.
  explicit ScriptedTransport(FakeClock* clock = nullptr) : clock_(clock) {}

  // Answers every call to `url` that finds its queue empty.
  void SetResponse(const std::string& url, ScriptedResponse response) {
    std::lock_guard lock(mu_);
    scripts_[url].fixed = std::move(response);
  }
  // Answers the next call to `url` only (after those queued before it).
  void Enqueue(const std::string& url, ScriptedResponse response) {
    std::lock_guard lock(mu_);
    scripts_[url].queue.push_back(std::move(response));
  }
  // Runs at the start of every call, with no lock held: lets a test block a call or look at
  // the state of the code under test while a request is "in flight".
  void SetOnCall(std::function<void(const std::string& url)> hook) {
    std::lock_guard lock(mu_);
    on_call_ = std::move(hook);
  }
  // Bodies land in dst `n` bytes at a time (n > 0), each piece followed by a progress call.
  void SetPieceSize(std::size_t n) {
    std::lock_guard lock(mu_);
    piece_size_ = n;
  }

  int Calls(const std::string& url) const {
    std::lock_guard lock(mu_);
    auto it = scripts_.find(url);
    return it == scripts_.end() ? 0 : static_cast<int>(it->second.timeouts.size());
  }
  int TotalCalls() const {
    std::lock_guard lock(mu_);
    return static_cast<int>(call_order_.size());
  }
  // URLs in the order they were called.
  std::vector<std::string> CallOrder() const {
    std::lock_guard lock(mu_);
    return call_order_;
  }
  // The range of every call to `url`, oldest first: std::nullopt for a Get, the range for a
  // GetRange.
  std::vector<std::optional<ScriptedRange>> Ranges(const std::string& url) const {
    std::lock_guard lock(mu_);
    auto it = scripts_.find(url);
    return it == scripts_.end() ? std::vector<std::optional<ScriptedRange>>{} : it->second.ranges;
  }
  // The timeout of every call to `url`, oldest first.
  std::vector<Duration> Timeouts(const std::string& url) const {
    std::lock_guard lock(mu_);
    auto it = scripts_.find(url);
    return it == scripts_.end() ? std::vector<Duration>{} : it->second.timeouts;
  }
  // The stall timeout of every call to `url`, oldest first (zero for a call without one).
  std::vector<Duration> StallTimeouts(const std::string& url) const {
    std::lock_guard lock(mu_);
    auto it = scripts_.find(url);
    return it == scripts_.end() ? std::vector<Duration>{} : it->second.stall_timeouts;
  }
  // The first-byte timeout of every GET to `url`, oldest first (zero for a call without one).
  std::vector<Duration> FirstByteTimeouts(const std::string& url) const {
    std::lock_guard lock(mu_);
    auto it = scripts_.find(url);
    return it == scripts_.end() ? std::vector<Duration>{} : it->second.first_byte_timeouts;
  }

  using netfetch::Transport::Get;
  using netfetch::Transport::GetRange;

  Status Get(const std::string& url, std::span<std::uint8_t> dst,
             const netfetch::RequestLimits& limits,
             const netfetch::ProgressCallback& progress) override {
    ScriptedResponse response = Answer(url, limits, std::nullopt);
    if (Status late = Elapse(url, response, limits); !late.ok()) return late;
    if (!response.status.ok()) return response.status;
    return Deliver(url, response, response.body, dst, progress);
  }

  Status GetRange(const std::string& url, std::uint64_t offset, std::span<std::uint8_t> dst,
                  const netfetch::RequestLimits& limits,
                  const netfetch::ProgressCallback& progress) override {
    if (dst.empty()) return InvalidArgumentError(url + ": empty range requested");
    ScriptedResponse response = Answer(url, limits, ScriptedRange{offset, dst.size()});
    if (Status late = Elapse(url, response, limits); !late.ok()) return late;
    if (!response.status.ok()) return response.status;
    if (response.ignores_range) {
      return UnavailableError("HTTP 200 instead of 206 from GET " + url +
                              ": the server ignored the Range header");
    }
    const std::size_t begin = std::min<std::uint64_t>(offset, response.body.size());
    const std::size_t end = std::min<std::uint64_t>(offset + dst.size(), response.body.size());
    return Deliver(url, response,
                   std::span<const std::uint8_t>(response.body).subspan(begin, end - begin), dst,
                   progress);
  }

  // A queued or fixed response decides the outcome (its body is ignored); with no script the
  // PUT succeeds. A successful PUT makes `body` the fixed GET response of `url`.
  Status Put(const std::string& url, std::span<const std::uint8_t> body,
             Duration timeout) override {
    std::optional<ScriptedResponse> scripted = AnswerPut(url, timeout);
    Duration delay = scripted ? scripted->delay : Duration{0};
    if (Status late = Elapse(url, delay, timeout); !late.ok()) return late;
    if (scripted && !scripted->status.ok()) return scripted->status;
    SetResponse(url, ScriptedResponse::Body({body.begin(), body.end()}));
    SetAge(url, std::chrono::seconds(0));
    return Status::Ok();
  }

  // Answers from the fixed response of `url` (a successful Put sets one): the size of its body,
  // or its error after its delay (a silent one cut at the stall or first-byte timeout, as for
  // Get); NotFound with none. Not counted among the calls above and runs
  // no SetOnCall hook (SetOnHead's instead), so that tests of what is fetched or PUT see only
  // that: Heads() lists them.
  using netfetch::Transport::Head;
  Result<std::uint64_t> Head(const std::string& url,
                             const netfetch::RequestLimits& limits) override {
    std::optional<ScriptedResponse> fixed;
    std::function<void(const std::string&)> hook;
    {
      std::lock_guard lock(mu_);
      heads_.push_back(url);
      auto it = scripts_.find(url);
      if (it != scripts_.end()) fixed = it->second.head ? it->second.head : it->second.fixed;
      hook = on_head_;
    }
    if (hook) hook(url);
    if (!fixed) return NotFoundError("HTTP 404 from HEAD " + url);
    if (Status late = Elapse(url, *fixed, limits); !late.ok()) return late;
    if (!fixed->status.ok()) return fixed->status;
    return fixed->body.size();
  }
  // Head answers `url` from `response` instead of from its fixed response: a server that treats
  // HEAD apart from GET.
  void SetHeadResponse(const std::string& url, ScriptedResponse response) {
    std::lock_guard lock(mu_);
    scripts_[url].head = std::move(response);
  }
  // Runs `hook(url)` at the start of every later Head call, on the calling thread, as SetOnCall
  // does for the other calls: a test can hold a HEAD in flight.
  void SetOnHead(std::function<void(const std::string& url)> hook) {
    std::lock_guard lock(mu_);
    on_head_ = std::move(hook);
  }
  // URLs asked for with Head, in order.
  std::vector<std::string> Heads() const {
    std::lock_guard lock(mu_);
    return heads_;
  }

  // Answers with the age SetAge gave `url` (a successful Put makes it 0 s), or NotFound. Not
  // counted among the calls above, nor does it run a hook.
  Result<std::chrono::seconds> Age(const std::string& url, Duration) override {
    std::lock_guard lock(mu_);
    auto it = ages_.find(url);
    if (it == ages_.end()) return NotFoundError("HTTP 404 from HEAD " + url);
    return it->second;
  }
  void SetAge(const std::string& url, Result<std::chrono::seconds> age) {
    std::lock_guard lock(mu_);
    ages_.insert_or_assign(url, std::move(age));
  }

  // Fails with the status SetDeleteStatus gave `url`, if any; otherwise removes what Put made
  // (NotFound when there was nothing). Recorded in Deletes(), not among the calls above.
  Status Delete(const std::string& url, Duration) override {
    std::lock_guard lock(mu_);
    deletes_.push_back(url);
    if (auto it = delete_statuses_.find(url); it != delete_statuses_.end()) return it->second;
    const bool there = scripts_.erase(url) > 0;
    ages_.erase(url);
    if (!there) return NotFoundError("HTTP 404 from DELETE " + url);
    return Status::Ok();
  }
  void SetDeleteStatus(const std::string& url, Status status) {
    std::lock_guard lock(mu_);
    delete_statuses_.insert_or_assign(url, std::move(status));
  }
  std::vector<std::string> Deletes() const {
    std::lock_guard lock(mu_);
    return deletes_;
  }
  // The body a successful Put left at `url`, if any.
  std::optional<std::vector<std::uint8_t>> Stored(const std::string& url) const {
    std::lock_guard lock(mu_);
    auto it = scripts_.find(url);
    if (it == scripts_.end() || !it->second.fixed || !it->second.fixed->status.ok()) {
      return std::nullopt;
    }
    return it->second.fixed->body;
  }

  using Transport::GetToFile;
  // Always the whole body: a scripted server has no modification times.
  Result<netfetch::FileFetch> GetToFile(const std::string& url, const std::string& path,
                                        Duration timeout, const netfetch::FileVersion&) override {
    ScriptedResponse response = Answer(url, netfetch::RequestLimits{timeout}, std::nullopt);
    if (Status late = Elapse(url, response.delay, timeout); !late.ok()) return late;
    if (!response.status.ok()) return response.status;
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(response.body.data()),
              static_cast<std::streamsize>(response.body.size()));
    out.close();
    if (!out) return InternalError("cannot write " + path);
    return netfetch::FileFetch{};
  }

 private:
  struct Script {
    std::deque<ScriptedResponse> queue;
    std::optional<ScriptedResponse> fixed;
    std::optional<ScriptedResponse> head;              // For Head, when not `fixed`.
    std::vector<Duration> timeouts;                    // One per call.
    std::vector<Duration> stall_timeouts;              // One per call.
    std::vector<Duration> first_byte_timeouts;         // One per GET.
    std::vector<std::optional<ScriptedRange>> ranges;  // One per call.
  };

  // Writes `body` into dst piece by piece with progress calls; checks the length like
  // CurlTransport (a longer body writes nothing past dst).
  Status Deliver(const std::string& url, const ScriptedResponse& response,
                 std::span<const std::uint8_t> body, std::span<std::uint8_t> dst,
                 const netfetch::ProgressCallback& progress) {
    std::size_t piece = 0;
    {
      std::lock_guard lock(mu_);
      piece = piece_size_;
    }
    const std::size_t n = std::min(body.size(), dst.size());
    const std::size_t stop = std::min(n, response.break_after.value_or(n));
    for (std::size_t done = 0; done < stop;) {
      const std::size_t take = piece == 0 ? stop - done : std::min(piece, stop - done);
      std::memcpy(dst.data() + done, body.data() + done, take);
      done += take;
      if (progress && !progress(done)) {
        return DataLossError("transfer of " + url + " abandoned by the caller after " +
                             std::to_string(done) + " bytes");
      }
    }
    if (stop < n) return UnavailableError(url + ": connection reset (scripted)");
    const std::string expected = std::to_string(dst.size());
    if (body.size() > dst.size()) {
      return DataLossError("body longer than " + expected + " bytes from " + url);
    }
    if (body.size() < dst.size()) {
      return DataLossError("short body: got " + std::to_string(n) + " of " + expected +
                           " bytes from " + url);
    }
    return Status::Ok();
  }

  // Records the call and takes its response; runs the hook.
  ScriptedResponse Answer(const std::string& url, const netfetch::RequestLimits& limits,
                          std::optional<ScriptedRange> range) {
    std::function<void(const std::string&)> hook;
    ScriptedResponse response;
    {
      std::lock_guard lock(mu_);
      Script& script = Record(url, limits.timeout, limits.stall_timeout);
      script.first_byte_timeouts.push_back(limits.first_byte_timeout);
      script.ranges.push_back(range);
      hook = on_call_;
      if (!script.queue.empty()) {
        response = std::move(script.queue.front());
        script.queue.pop_front();
      } else if (script.fixed) {
        response = *script.fixed;
      } else {
        response = ScriptedResponse::Error(UnavailableError("HTTP 404 from GET " + url));
      }
    }
    if (hook) hook(url);
    return response;
  }

  std::optional<ScriptedResponse> AnswerPut(const std::string& url, Duration timeout) {
    std::function<void(const std::string&)> hook;
    std::optional<ScriptedResponse> response;
    {
      std::lock_guard lock(mu_);
      Script& script = Record(url, timeout, Duration::zero());
      script.ranges.push_back(std::nullopt);
      hook = on_call_;
      if (!script.queue.empty()) {
        response = std::move(script.queue.front());
        script.queue.pop_front();
      } else if (script.fixed && !script.fixed->status.ok()) {
        response = script.fixed;
      }
    }
    if (hook) hook(url);
    return response;
  }

  // REQUIRES: mu_ held.
  Script& Record(const std::string& url, Duration timeout, Duration stall_timeout) {
    Script& script = scripts_[url];
    script.timeouts.push_back(timeout);
    script.stall_timeouts.push_back(stall_timeout);
    call_order_.push_back(url);
    return script;
  }

  // As below; a silent response is also cut short at the first-byte or the stall timeout,
  // whichever comes first, if that comes before the response would.
  Status Elapse(const std::string& url, const ScriptedResponse& response,
                const netfetch::RequestLimits& limits) {
    Duration cut = limits.stall_timeout;
    if (limits.first_byte_timeout > Duration::zero() &&
        (cut <= Duration::zero() || limits.first_byte_timeout < cut)) {
      cut = limits.first_byte_timeout;
    }
    if (response.silent && cut > Duration::zero() && cut < response.delay && cut < limits.timeout) {
      if (clock_ != nullptr) clock_->Advance(cut);
      return UnavailableError(
          url + ": nothing received within " +
          std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(cut).count()) +
          " ms (scripted)");
    }
    return Elapse(url, response.delay, limits.timeout);
  }

  // Lets the fake request take `delay`, cut short at `timeout` as a real transport would.
  Status Elapse(const std::string& url, Duration delay, Duration timeout) {
    if (timeout <= Duration::zero() || delay > timeout) {
      if (clock_ != nullptr) clock_->Advance(timeout);
      return DeadlineExceededError(url + ": scripted response takes longer than the timeout");
    }
    if (clock_ != nullptr) clock_->Advance(delay);
    return Status::Ok();
  }

  FakeClock* const clock_;
  mutable std::mutex mu_;
  std::map<std::string, Script> scripts_;  // Guarded by mu_.
  std::vector<std::string> call_order_;
  std::vector<std::string> heads_;                            // Guarded by mu_.
  std::map<std::string, Result<std::chrono::seconds>> ages_;  // Guarded by mu_.
  std::map<std::string, Status> delete_statuses_;             // Guarded by mu_.
  std::vector<std::string> deletes_;                          // Guarded by mu_.
  std::function<void(const std::string& url)> on_call_;       // Guarded by mu_.
  std::function<void(const std::string& url)> on_head_;       // Guarded by mu_.
  std::size_t piece_size_ = 0;                                // Guarded by mu_. 0: all at once.
};

}  // namespace ckptfs::testing
