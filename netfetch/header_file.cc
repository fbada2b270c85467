#include "netfetch/header_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <string_view>
#include <utility>
#include <vector>

#include "common/file_io.h"
#include "common/log.h"
#include "common/unique_fd.h"

namespace ckptfs::netfetch {
namespace {

// RFC 9110 token characters: what a field name may be made of.
bool IsTokenChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool IsValueChar(char c) {
  const auto u = static_cast<unsigned char>(c);
  return c == '\t' || (u >= 0x20 && u != 0x7f);
}

bool EqualsIgnoringCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

// Headers that ckptfs sets itself to get the right bytes; one from the file would break reads.
bool IsOurs(std::string_view name) {
  constexpr std::array<std::string_view, 6> kOurs = {
      "Range",  "Content-Length", "Transfer-Encoding",
      "Expect", "If-None-Match",  "If-Modified-Since"};
  return std::any_of(kOurs.begin(), kOurs.end(),
                     [&](std::string_view ours) { return EqualsIgnoringCase(name, ours); });
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

bool HeaderFile::Version::operator==(const Version& other) const {
  return dev == other.dev && ino == other.ino && size == other.size &&
         mtime.tv_sec == other.mtime.tv_sec && mtime.tv_nsec == other.mtime.tv_nsec;
}

Result<HeaderLines> HeaderFile::Parse(std::string_view text, const std::string& name) {
  HeaderLines lines;
  int number = 0;
  while (!text.empty()) {
    const std::size_t end = std::min(text.find('\n'), text.size());
    std::string_view line = text.substr(0, end);
    text.remove_prefix(std::min(end + 1, text.size()));
    ++number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    const std::string where = name + " line " + std::to_string(number) + ": ";
    if (Trim(line).empty() || Trim(line).front() == '#') continue;
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos) {
      return InvalidArgumentError(where + "not a header (\"Name: value\")");
    }
    const std::string_view field = line.substr(0, colon);
    const std::string_view value = Trim(line.substr(colon + 1));
    if (field.empty() || !std::all_of(field.begin(), field.end(), IsTokenChar)) {
      return InvalidArgumentError(where + "not a header name before the ':'");
    }
    if (IsOurs(field)) {
      return InvalidArgumentError(where + std::string(field) +
                                  " is set by ckptfs itself and cannot be given");
    }
    if (value.empty()) return InvalidArgumentError(where + std::string(field) + " has no value");
    if (!std::all_of(value.begin(), value.end(), IsValueChar)) {
      return InvalidArgumentError(where + "the value of " + std::string(field) +
                                  " holds a control character");
    }
    lines.push_back(std::string(field) + ": " + std::string(value));
  }
  if (lines.empty()) return InvalidArgumentError(name + " holds no header");
  return lines;
}

Result<HeaderFile::Version> HeaderFile::Stat(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return ErrnoStatus(errno, path);
  return Version{st.st_dev, st.st_ino, st.st_size, st.st_mtim};
}

Result<HeaderFile::Loaded> HeaderFile::Load(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoStatus(errno, path);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, path);
  if (!S_ISREG(st.st_mode)) return InvalidArgumentError(path + " is not a regular file");
  if (static_cast<std::uint64_t>(st.st_size) > kMaxFileBytes) {
    return InvalidArgumentError(path + " is larger than a header file can be (" +
                                std::to_string(kMaxFileBytes / 1024) + " KiB)");
  }
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(st.st_size));
  CKPTFS_RETURN_IF_ERROR(PreadExactly(fd.get(), 0, bytes).WithContext(path));
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  CKPTFS_ASSIGN_OR_RETURN(HeaderLines lines, Parse(text, path));
  return Loaded{Version{st.st_dev, st.st_ino, st.st_size, st.st_mtim}, std::move(lines)};
}

Result<std::unique_ptr<HeaderFile>> HeaderFile::Open(const std::string& path, Clock* clock,
                                                     Duration recheck) {
  CKPTFS_ASSIGN_OR_RETURN(const std::string absolute, AbsolutePath(path));
  CKPTFS_ASSIGN_OR_RETURN(Loaded loaded, Load(absolute));
  std::unique_ptr<HeaderFile> file(new HeaderFile(absolute, clock, recheck));
  file->current_ = std::make_shared<const HeaderLines>(std::move(loaded.lines));
  file->version_ = loaded.version;
  file->checked_ = clock->Now();
  return file;
}

std::shared_ptr<const HeaderLines> HeaderFile::Current() {
  const TimePoint now = clock_->Now();
  std::lock_guard lock(mu_);
  if (now - checked_ >= recheck_) RefreshLocked(now);
  return current_;
}

void HeaderFile::RefreshLocked(TimePoint now) {
  checked_ = now;
  // A file that cannot be looked at is remembered as the empty version, logged once until then.
  Result<Version> version = Stat(path_);
  const Version seen = version.ok() ? *version : Version{};
  if (version.ok() && seen == version_) return;
  if (failed_ && *failed_ == seen) return;
  Result<Loaded> loaded = version.ok() ? Load(path_) : Result<Loaded>(version.status());
  if (!loaded.ok()) {
    failed_ = seen;
    LogWarning("http_headers: keeping the headers read before: " + loaded.status().message());
    return;
  }
  current_ = std::make_shared<const HeaderLines>(std::move(loaded->lines));
  version_ = loaded->version;
  failed_.reset();
  const std::size_t n = current_->size();
  LogInfo("http_headers: read " + path_ + " again (" + std::to_string(n) +
          (n == 1 ? " header)" : " headers)"));
}

}  // namespace ckptfs::netfetch
