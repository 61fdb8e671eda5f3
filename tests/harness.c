/* The harness: counts checks and tests, prints the summary line. */
#include "harness.h"
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static int g_passed, g_failed, g_skipped, g_cur_failed, g_checks;

void th_check(int ok, const char *expr, const char *file, int line) {
    g_checks++;
    if (!ok) {
        g_cur_failed++;
        fprintf(stderr, "  CHECK failed: %s (%s:%d)\n", expr, file, line);
    }
}

void th_run(const char *name, void (*fn)(void)) {
    int before = g_checks;
    g_cur_failed = 0;
    fn();
    if (g_checks == before) { /* a test that asserts nothing is a failure */
        fprintf(stderr, "  %s made no checks\n", name);
        g_cur_failed++;
    }
    if (g_cur_failed) g_failed++; else g_passed++;
    printf("%s %s\n", g_cur_failed ? "FAIL" : "ok  ", name);
    fflush(stdout);
}

void th_skip(const char *name, const char *why) {
    g_skipped++;
    printf("skip %s (%s)\n", name, why);
}

void th_note(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("     ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

double th_relerr(const float *a, const float *b, size_t n) {
    double md = 0, mb = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= md)) md = d; /* NaN propagates as failure */
        if (fabs((double)b[i]) > mb) mb = fabs((double)b[i]);
    }
    return mb > 0 ? md / mb : md;
}

double th_relerr_d(const double *a, const double *b, size_t n) {
    double md = 0, mb = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (!(d <= md)) md = d;
        if (fabs(b[i]) > mb) mb = fabs(b[i]);
    }
    return mb > 0 ? md / mb : md;
}

int th_summary(void) {
    if (g_skipped) printf("%d skipped\n", g_skipped);
    printf("%d checks\n", g_checks);
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
