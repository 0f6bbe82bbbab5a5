/* export.h - symbol visibility for libtitan's public API. */
#ifndef TITAN_EXPORT_H
#define TITAN_EXPORT_H

#if defined(TITAN_BUILDING_LIB)
#define TITAN_API __attribute__((visibility("default")))
#else
#define TITAN_API
#endif

#endif
