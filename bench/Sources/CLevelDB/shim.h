// Umbrella header for the CLevelDB module: LevelDB's C API from libleveldb-dev.
// Thread-safety: as LevelDB documents it (a leveldb_t is shared across threads; iterators are not).
#ifndef MORAINE_CLEVELDB_SHIM_H
#define MORAINE_CLEVELDB_SHIM_H
#include <stddef.h>
#include <leveldb/c.h>
#endif
