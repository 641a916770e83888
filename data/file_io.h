// Small file helpers shared by the data layer.
#pragma once

#include <string>

namespace kiln {

/// The whole file as bytes. A missing or unreadable file, or a directory, is
/// an InputError naming the path and the reason.
std::string read_file(const std::string& path);

/// Creates `dir` and its parents if missing; InputError naming it on failure
/// (or when it exists and is not a directory).
void make_directories(const std::string& dir);

}  // namespace kiln
