/* fuzz_bundle.c - the bundle archive reader: every path safe, no
 * duplicates, entrypoint present, or a clean refusal. */
#include <stddef.h>
#include <stdint.h>

#include "bundle.h"
#include "fuzz.h"
#include "names.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pc_bundle *b = NULL;
    pc_err err;
    if (pc_bundle_open(data, size, &b, &err) != PC_OK)
        return 0;
    for (size_t i = 0; i < pc_bundle_file_count(b); i++) {
        const char *path;
        const uint8_t *content;
        size_t len;
        pc_bundle_file_at(b, i, &path, &content, &len);
        if (!pc_bundle_path_valid(path))
            __builtin_trap(); /* an unsafe path got through */
    }
    if (pc_bundle_file(b, pc_bundle_entrypoint(b), NULL, NULL) != PC_OK)
        __builtin_trap();
    pc_bundle_free(b);
    return 0;
}
