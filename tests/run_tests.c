/* Test runner: every suite (or the ones named on the command line), then
   "N passed, N failed"; exit status 1 on any failure. */
#include "harness.h"
#include <string.h>

static int g_argc;
static char **g_argv;
static int want(const char *suite) {
    int i;
    if (g_argc < 2) return 1;
    for (i = 1; i < g_argc; i++)
        if (!strcmp(g_argv[i], suite)) return 1;
    return 0;
}

int main(int argc, char **argv) {
    g_argc = argc;
    g_argv = argv;
    if (want("core")) suite_core();
    if (want("kernel")) suite_kernel();
    if (want("gguf")) suite_gguf();
    if (want("convert")) suite_convert();
    if (want("cuda")) suite_cuda();
    if (want("model")) suite_model();
    if (want("cli")) suite_cli();
    return th_summary();
}
