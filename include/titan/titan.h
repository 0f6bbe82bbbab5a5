/* titan.h - public entry point of libtitan, the titan client library. */
#ifndef TITAN_TITAN_H
#define TITAN_TITAN_H

#define TITAN_VERSION "0.1.0"
#define TITAN_PROTOCOL_VERSION 1

#include "titan/export.h"
#include "titan/tensor.h"
#include "titan/client.h"
#include "titan/jobs.h"
#include "titan/router.h"

#endif
