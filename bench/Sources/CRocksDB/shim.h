// Umbrella header for the CRocksDB module: RocksDB's C API from librocksdb-dev.
// Thread-safety: as RocksDB documents it (a rocksdb_t is shared across threads; iterators are not).
#ifndef MORAINE_CROCKSDB_SHIM_H
#define MORAINE_CROCKSDB_SHIM_H
#include <rocksdb/c.h>
#endif
