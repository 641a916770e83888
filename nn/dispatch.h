// Moved: dispatch() and check_same() live in runtime/dispatch.h (one
// dispatch mechanism for the runtime and nn). This header only forwards,
// for files not yet switched over; include runtime/dispatch.h instead.
#pragma once

#include "runtime/dispatch.h"
