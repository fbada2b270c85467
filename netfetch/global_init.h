// Process-wide set-up of the HTTP library. Call once from main before any thread starts
// (libcurl's rule for curl_global_init), and GlobalCleanup once at exit.
#pragma once

#include "common/status.h"

namespace ckptfs::netfetch {

Status GlobalInit();
void GlobalCleanup();

}  // namespace ckptfs::netfetch
