// CRC32C (polynomial 0x82F63B78, reflected). Two paths computing the same function:
// slicing-by-8 tables in portable C, and the SSE4.2 `crc32` instruction. The dispatcher picks
// once per process, from cpuid, and caches the choice.
#include "CSystemShims.h"
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
__attribute__((target("sse4.2")))
uint32_t CSystemShims_crc32c_extend_hardware(uint32_t crc, const void *data, size_t length) {
    const uint8_t *p = (const uint8_t *)data;
    uint64_t c = (uint32_t)~crc;
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
