#include "cli/node_urls.h"

#include <algorithm>

namespace ckptfs::cli {

bool IsHttpUrl(std::string_view s) { return s.starts_with("http://") || s.starts_with("https://"); }

std::string WithoutTrailingSlashes(std::string url) {
  while (url.size() > 1 && url.back() == '/') url.pop_back();
  return url;
}

Status OverrideNodeUrls(const std::map<std::string, std::string>& overrides,
                        std::string_view option_prefix,
                        std::vector<netfetch::NodeEndpoint>& endpoints) {
  for (const auto& [name, url] : overrides) {
    const std::string what = std::string(option_prefix) + name;
    auto it = std::find_if(endpoints.begin(), endpoints.end(),
                           [&](const netfetch::NodeEndpoint& e) { return e.name == name; });
    if (it == endpoints.end()) {
      return InvalidArgumentError(what + ": the index has no node '" + name + "'");
    }
    if (!IsHttpUrl(url)) return InvalidArgumentError(what + ": not an http(s) URL");
    it->url = WithoutTrailingSlashes(url);
  }
  return Status::Ok();
}

}  // namespace ckptfs::cli
