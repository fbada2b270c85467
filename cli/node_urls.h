// URLs as the commands take them: what counts as one, how a node's is written, and node URLs
// given on the command line in place of the index's (mount's node.NAME=, check's --node).
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/status.h"
#include "netfetch/fetcher.h"

namespace ckptfs::cli {

// How long a whole index may take to move over HTTP, down (mount, check) or up (publish): not a
// read's timeout, since a large index on a slow link takes longer (11.6 MiB at 300 KiB/s failed
// at 20 s). One that stops moving ends sooner, at the transport's low-speed limit.
constexpr Duration kIndexTransferTimeout = std::chrono::hours(1);

// An http:// or https:// URL.
bool IsHttpUrl(std::string_view s);

// `url` without trailing slashes: objects live at <base>/chunks/...
std::string WithoutTrailingSlashes(std::string url);

// Sets the URL of each node named in `overrides` (name → URL). InvalidArgument, with
// `option_prefix` and the name in front ("option node.n1: ..."), for a name no endpoint has or
// a URL that is not http(s).
Status OverrideNodeUrls(const std::map<std::string, std::string>& overrides,
                        std::string_view option_prefix,
                        std::vector<netfetch::NodeEndpoint>& endpoints);

}  // namespace ckptfs::cli
