#include "netfetch/global_init.h"

#include <curl/curl.h>

#include <string>

namespace ckptfs::netfetch {

Status GlobalInit() {
  CURLcode code = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (code != CURLE_OK) {
    return InternalError(std::string("cannot initialise libcurl: ") + curl_easy_strerror(code));
  }
  return Status::Ok();
}

void GlobalCleanup() { curl_global_cleanup(); }

}  // namespace ckptfs::netfetch
