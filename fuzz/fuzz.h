/* fuzz.h - the libFuzzer entry point every target defines (declared here
 * so it has a prototype, as -Wmissing-prototypes asks of every external
 * function). */
#ifndef PC_FUZZ_H
#define PC_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
