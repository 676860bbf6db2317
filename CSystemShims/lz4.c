// LZ4 block-format wrappers (the frame format is not used: block sizes are stored by Moraine).
#include "CSystemShims.h"
#include <lz4.h>

int CSystemShims_lz4_compress_bound(int input_size) { return LZ4_compressBound(input_size); }

int CSystemShims_lz4_compress(const void *source, int source_size, void *destination, int capacity) {
    return LZ4_compress_default((const char *)source, (char *)destination, source_size, capacity);
}

int CSystemShims_lz4_decompress(const void *source, int source_size, void *destination, int capacity) {
    return LZ4_decompress_safe((const char *)source, (char *)destination, source_size, capacity);
}
