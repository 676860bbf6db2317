// CSystemShims: the only C in Moraine. Thin wrappers over liblz4 and a CRC32C with a
// hardware (SSE4.2) path chosen at run time and a portable software path. liburing, libpmem
// and libnuma wrappers join this header later; feature macros (when needed) go at the very top because
// the Swift importer does not see cSettings defines.
#ifndef CSYSTEMSHIMS_H
#define CSYSTEMSHIMS_H


#include <sys/types.h>
#include <stddef.h>
#include <stdint.h>

// ---- CRC32C (Castagnoli) ---------------------------------------------------------------
/// Extends `crc` (a finished CRC32C of earlier bytes, 0 for none) over `length` bytes,
/// using the SSE4.2 instruction when the CPU has it and the table path otherwise.
uint32_t CSystemShims_crc32c_extend(uint32_t crc, const void *data, size_t length);
/// The table-driven software path, always available.
uint32_t CSystemShims_crc32c_extend_software(uint32_t crc, const void *data, size_t length);
/// The SSE4.2 path. Precondition: CSystemShims_crc32c_hardware_available() returned 1.
uint32_t CSystemShims_crc32c_extend_hardware(uint32_t crc, const void *data, size_t length);
/// 1 when the running CPU has the SSE4.2 CRC32 instruction, else 0.
int CSystemShims_crc32c_hardware_available(void);

// ---- LZ4 -------------------------------------------------------------------------------
/// Worst-case compressed size for `input_size` bytes, or 0 when the input is too large.
int CSystemShims_lz4_compress_bound(int input_size);
/// Compresses; returns bytes written, or 0 when `capacity` is too small.
int CSystemShims_lz4_compress(const void *source, int source_size, void *destination, int capacity);
/// Decompresses exactly; returns bytes written, or a negative number for malformed input.
int CSystemShims_lz4_decompress(const void *source, int source_size, void *destination, int capacity);

#endif
