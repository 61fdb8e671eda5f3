#include "harness.h"
void suite_convert(void) {}
