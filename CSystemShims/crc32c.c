// CRC32C (polynomial 0x82F63B78, reflected). Two paths computing the same function:
// slicing-by-8 tables in portable C, and the SSE4.2 `crc32` instruction. The dispatcher picks
// once per process, from cpuid, and caches the choice.
#include "CSystemShims.h"
#include <pthread.h>
#include <string.h>

static uint32_t crc_tables[8][256];
static int crc_tables_ready = 0;

static void crc_build_tables(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : (c >> 1);
        crc_tables[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = crc_tables[0][i];
        for (int t = 1; t < 8; t++) {
            c = crc_tables[0][c & 0xFF] ^ (c >> 8);
            crc_tables[t][i] = c;
        }
    }
    __atomic_store_n(&crc_tables_ready, 1, __ATOMIC_RELEASE);
}

uint32_t CSystemShims_crc32c_extend_software(uint32_t crc, const void *data, size_t length) {
    if (!__atomic_load_n(&crc_tables_ready, __ATOMIC_ACQUIRE)) crc_build_tables();
    const uint8_t *p = (const uint8_t *)data;
    uint32_t c = ~crc;
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        word ^= c;  // little-endian: the low 4 bytes take the running crc
        c = crc_tables[7][word & 0xFF] ^ crc_tables[6][(word >> 8) & 0xFF] ^
            crc_tables[5][(word >> 16) & 0xFF] ^ crc_tables[4][(word >> 24) & 0xFF] ^
            crc_tables[3][(word >> 32) & 0xFF] ^ crc_tables[2][(word >> 40) & 0xFF] ^
            crc_tables[1][(word >> 48) & 0xFF] ^ crc_tables[0][word >> 56];
        p += 8;
        length -= 8;
    }
    while (length--) c = crc_tables[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return ~c;
}

#if defined(__x86_64__)
// The crc32 instruction has a latency of about three cycles and a throughput of one per cycle,
// so one dependent chain uses a third of it. Long buffers run three chains over three adjacent
// blocks of `block` bytes and join them: a register that went through a block is the register
// before it, moved through `block` zero bytes, xor the block's own CRC from a zero register
// (CRC is linear). Moving through zero bytes is a fixed 32x32 bit matrix, applied here with
// four 256-entry tables per block size, built once from the instruction itself.
enum { CRC_SHORT_BLOCK = 256, CRC_LONG_BLOCK = 4096 };
static uint32_t crc_shift_short[4][256];
static uint32_t crc_shift_long[4][256];
static pthread_once_t crc_shift_once = PTHREAD_ONCE_INIT;

__attribute__((target("sse4.2")))
static void crc_build_shift(uint32_t table[4][256], size_t zero_bytes) {
    uint32_t column[32];
    for (int bit = 0; bit < 32; bit++) {
        uint64_t c = 1u << bit;
        for (size_t i = 0; i < zero_bytes / 8; i++) c = __builtin_ia32_crc32di(c, 0);
        column[bit] = (uint32_t)c;
    }
    for (int k = 0; k < 4; k++) {
        for (uint32_t b = 0; b < 256; b++) {
            uint32_t out = 0;
            for (int j = 0; j < 8; j++) {
                if (b & (1u << j)) out ^= column[8 * k + j];
            }
            table[k][b] = out;
        }
    }
}

__attribute__((target("sse4.2")))
static void crc_build_shift_tables(void) {
    crc_build_shift(crc_shift_short, CRC_SHORT_BLOCK);
    crc_build_shift(crc_shift_long, CRC_LONG_BLOCK);
}

static inline uint32_t crc_shift(const uint32_t table[4][256], uint32_t c) {
    return table[0][c & 0xFF] ^ table[1][(c >> 8) & 0xFF] ^ table[2][(c >> 16) & 0xFF] ^ table[3][c >> 24];
}

__attribute__((target("sse4.2")))
static inline uint64_t crc_three_blocks(uint64_t c, const uint8_t *p, size_t block, const uint32_t table[4][256]) {
    uint64_t c1 = 0, c2 = 0;
    for (size_t i = 0; i < block; i += 8) {
        uint64_t w0, w1, w2;
        memcpy(&w0, p + i, 8);
        memcpy(&w1, p + block + i, 8);
        memcpy(&w2, p + 2 * block + i, 8);
        c = __builtin_ia32_crc32di(c, w0);
        c1 = __builtin_ia32_crc32di(c1, w1);
        c2 = __builtin_ia32_crc32di(c2, w2);
    }
    uint32_t joined = crc_shift(table, (uint32_t)c) ^ (uint32_t)c1;
    return crc_shift(table, joined) ^ (uint32_t)c2;
}

__attribute__((target("sse4.2")))
uint32_t CSystemShims_crc32c_extend_hardware(uint32_t crc, const void *data, size_t length) {
    const uint8_t *p = (const uint8_t *)data;
    uint64_t c = (uint32_t)~crc;
    if (length >= 3 * CRC_SHORT_BLOCK) {
        pthread_once(&crc_shift_once, crc_build_shift_tables);
        while (length >= 3 * CRC_LONG_BLOCK) {
            c = crc_three_blocks(c, p, CRC_LONG_BLOCK, crc_shift_long);
            p += 3 * CRC_LONG_BLOCK;
            length -= 3 * CRC_LONG_BLOCK;
        }
        while (length >= 3 * CRC_SHORT_BLOCK) {
            c = crc_three_blocks(c, p, CRC_SHORT_BLOCK, crc_shift_short);
            p += 3 * CRC_SHORT_BLOCK;
            length -= 3 * CRC_SHORT_BLOCK;
        }
    }
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c = __builtin_ia32_crc32di(c, word);
        p += 8;
        length -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (length--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}

int CSystemShims_crc32c_hardware_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") ? 1 : 0;
}
#else
uint32_t CSystemShims_crc32c_extend_hardware(uint32_t crc, const void *data, size_t length) {
    return CSystemShims_crc32c_extend_software(crc, data, length);
}
int CSystemShims_crc32c_hardware_available(void) { return 0; }
#endif

static int crc_choice = -1;  // -1 unknown, 0 software, 1 hardware

uint32_t CSystemShims_crc32c_extend(uint32_t crc, const void *data, size_t length) {
    int choice = __atomic_load_n(&crc_choice, __ATOMIC_RELAXED);
    if (choice < 0) {
        choice = CSystemShims_crc32c_hardware_available();
        __atomic_store_n(&crc_choice, choice, __ATOMIC_RELAXED);
    }
    return choice ? CSystemShims_crc32c_extend_hardware(crc, data, length)
                  : CSystemShims_crc32c_extend_software(crc, data, length);
}
