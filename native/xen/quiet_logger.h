// Xen's libraries log every failure to stderr unless handed a logger; the
// errors the addons throw already say what failed, so theirs are dropped.
#pragma once

#include <cstdarg>

// Xen 4.17's headers have no extern "C" guards of their own.
extern "C" {
#include <xentoollog.h>
}

namespace xenmesh {

inline void QuietMessage(xentoollog_logger*, xentoollog_level, int, const char*, const char*, va_list) {}
inline void QuietDestroy(xentoollog_logger*) {}
inline xentoollog_logger quietLogger = {QuietMessage, nullptr, QuietDestroy};

}  // namespace xenmesh
