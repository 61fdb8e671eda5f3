#include "svg.h"
#include "outfile.h"
#include <math.h>
#include <stdio.h>

/* text content for XML: the five special characters escaped, control bytes dropped */
static void esc(FILE *f, const char *s) {
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '&') fputs("&amp;", f);
        else if (ch == '<') fputs("&lt;", f);
        else if (ch == '>') fputs("&gt;", f);
        else if (ch == '"') fputs("&quot;", f);
        else if (ch == '\'') fputs("&apos;", f);
        else if (ch >= 0x20 || ch == '\t') fputc(ch, f);
    }
}

/* a point the log-scale chart can draw */
static int drawable(double x, double y) { return isfinite(x) && isfinite(y) && y > 0; }

int svg_chart(const char *path, const char *title, const char *xlabel, const char *ylabel, const svg_series *s,
              int n_series, double ref_y, const char *ref_label) {
    static const char *colors[] = {"#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"};
    const double W = 780, H = 460, L = 80, R = 230, T = 50, B = 60;
    double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
    int i, k;
    char err[256];
    outfile out;
    FILE *f;
    if (outfile_open(&out, path, err, sizeof err)) return -1;
    f = out.fp;
    for (i = 0; i < n_series; i++)
        for (k = 0; k < s[i].n; k++) {
            if (!drawable(s[i].x[k], s[i].y[k])) continue;
            if (s[i].x[k] < x0) x0 = s[i].x[k];
            if (s[i].x[k] > x1) x1 = s[i].x[k];
            if (s[i].y[k] < y0) y0 = s[i].y[k];
            if (s[i].y[k] > y1) y1 = s[i].y[k];
        }
    if (y1 < y0) { y0 = ref_y > 0 ? ref_y : 1; y1 = y0; } /* nothing drawable */
    if (ref_y > 0 && ref_y < y0) y0 = ref_y;
    if (ref_y > y1 && isfinite(ref_y)) y1 = ref_y;
    x0 = 0;
    y0 = log(y0 * 0.9); /* log scale for perplexity */
    y1 = log(y1 * 1.1);
    if (x1 <= x0) x1 = x0 + 1;
    if (y1 <= y0) y1 = y0 + 1;
#define PX(v) (L + ((v) - x0) / (x1 - x0) * (W - L - R))
#define PY(v) (H - B - (log(v) - y0) / (y1 - y0) * (H - T - B))
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%g\" y=\"25\" font-size=\"15\" text-anchor=\"middle\">", (W - R + L) / 2);
    esc(f, title);
    fprintf(f, "</text>\n");
    fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"black\"/>\n", L, H - B, W - R, H - B);
    fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"black\"/>\n", L, T, L, H - B);
    for (k = 0; k <= 5; k++) { /* x ticks */
        double v = x0 + (x1 - x0) * k / 5;
        fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">%.0f</text>\n", PX(v), H - B + 18, v);
        fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"#ddd\"/>\n", PX(v), T, PX(v), H - B);
    }
    for (k = 0; k <= 5; k++) { /* y ticks, log spaced */
        double v = exp(y0 + (y1 - y0) * k / 5);
        fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"end\">%.1f</text>\n", L - 6, PY(v) + 4, v);
        fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"#ddd\"/>\n", L, PY(v), W - R, PY(v));
    }
    fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">", (W - R + L) / 2, H - 15);
    esc(f, xlabel);
    fprintf(f, "</text>\n<text transform=\"translate(20,%g) rotate(-90)\" text-anchor=\"middle\">", (H - B + T) / 2);
    esc(f, ylabel);
    fprintf(f, "</text>\n");
    if (ref_y > 0 && isfinite(ref_y)) {
        fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"gray\" stroke-dasharray=\"5,4\"/>\n", L, PY(ref_y), W - R, PY(ref_y));
        fprintf(f, "<text x=\"%g\" y=\"%g\" fill=\"gray\">", W - R + 6, PY(ref_y) + 4);
        esc(f, ref_label);
        fprintf(f, "</text>\n");
    }
    for (i = 0; i < n_series; i++) {
        const char *c = colors[i % 5];
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", c);
        for (k = 0; k < s[i].n; k++)
            if (drawable(s[i].x[k], s[i].y[k])) fprintf(f, "%g,%g ", PX(s[i].x[k]), PY(s[i].y[k]));
        fprintf(f, "\"/>\n");
        for (k = 0; k < s[i].n; k++)
            if (drawable(s[i].x[k], s[i].y[k])) fprintf(f, "<circle cx=\"%g\" cy=\"%g\" r=\"3.5\" fill=\"%s\"/>\n", PX(s[i].x[k]), PY(s[i].y[k]), c);
        fprintf(f, "<rect x=\"%g\" y=\"%g\" width=\"14\" height=\"4\" fill=\"%s\"/>\n", W - R + 6, T + 20.0 * i + 30, c);
        fprintf(f, "<text x=\"%g\" y=\"%g\">", W - R + 24, T + 20.0 * i + 36);
        esc(f, s[i].name);
        fprintf(f, "</text>\n");
    }
#undef PX
#undef PY
    fprintf(f, "</svg>\n");
    return outfile_commit(&out, err, sizeof err);
}
