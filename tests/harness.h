/* Tiny test harness: CHECK counts, a test fails if any of its checks fail,
   the runner prints "N passed, N failed" over tests. */
#ifndef TEST_HARNESS_H
#define TEST_HARNESS_H
#include <stdio.h>
#include <stddef.h>

void th_check(int ok, const char *expr, const char *file, int line);
void th_run(const char *name, void (*fn)(void));
void th_skip(const char *name, const char *why);
void th_note(const char *fmt, ...);
int th_summary(void); /* prints "N passed, N failed"; 1 if any failed */
/* normwise relative error max|a-b| / max|b| */
double th_relerr(const float *a, const float *b, size_t n);
double th_relerr_d(const double *a, const double *b, size_t n);

#define CHECK(cond) th_check(!!(cond), #cond, __FILE__, __LINE__)
#define CHECK_LE(val, bound)                                                          \
    do {                                                                              \
        double th_v_ = (double)(val), th_b_ = (double)(bound);                       \
        th_check(th_v_ <= th_b_, #val " <= " #bound, __FILE__, __LINE__);             \
        if (!(th_v_ <= th_b_)) fprintf(stderr, "    value %.3g > bound %.3g\n", th_v_, th_b_); \
    } while (0)
#define RUN(fn) th_run(#fn, fn)
/* a one-sequence batch for mla_decode (which takes pointers) */
#define SEQS1(p) ((mla_seq *[1]){p})

/* suites */
void suite_core(void);
void suite_kernel(void);
void suite_gguf(void);
void suite_model(void);
void suite_convert(void);
void suite_cuda(void);
void suite_cli(void);
#endif
