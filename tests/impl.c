/* The one translation unit with the implementation, with a counting
   allocator so tests can prove that the decode step allocates nothing. */
#include <stdlib.h>
size_t test_alloc_count;
static void *test_malloc(size_t n) {
    test_alloc_count++;
    return malloc(n);
}
#define MLA_MALLOC(n) test_malloc(n)
#define MLA_FREE(p) free(p)
#define MLA_IMPLEMENTATION
#include "../mla.h"
