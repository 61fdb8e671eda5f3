/* The CUDA suite alone (GPU build): tools/gpu_check.sh runs it. */
#include "harness.h"
int main(void) {
    suite_cuda();
    return th_summary();
}
