/* The one translation unit of the examples that holds the implementation. */
#define MLA_IMPLEMENTATION
#include "../../mla.h"
