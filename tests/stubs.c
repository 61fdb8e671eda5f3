#include "harness.h"
void suite_gguf(void) {}
void suite_model(void) {}
void suite_convert(void) {}
