/* Test runner: every suite (or the one named on the command line), then
   "N passed, N failed"; exit status 1 on any failure. */
#include "harness.h"
#include <string.h>

int main(int argc, char **argv) {
    const char *only = argc > 1 ? argv[1] : NULL;
    if (!only || !strcmp(only, "core")) suite_core();
    if (!only || !strcmp(only, "kernel")) suite_kernel();
    if (!only || !strcmp(only, "gguf")) suite_gguf();
    if (!only || !strcmp(only, "convert")) suite_convert();
    if (!only || !strcmp(only, "cuda")) suite_cuda();
    if (!only || !strcmp(only, "model")) suite_model();
    if (!only || !strcmp(only, "cli")) suite_cli();
    return th_summary();
}
