#include "svg.h"
#include <math.h>
#include <stdio.h>

int svg_chart(const char *path, const char *title, const char *xlabel, const char *ylabel, const svg_series *s,
              int n_series, double ref_y, const char *ref_label) {
    static const char *colors[] = {"#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"};
    const double W = 780, H = 460, L = 80, R = 230, T = 50, B = 60;
    double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
    int i, k;
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    for (i = 0; i < n_series; i++)
        for (k = 0; k < s[i].n; k++) {
            if (s[i].x[k] < x0) x0 = s[i].x[k];
            if (s[i].x[k] > x1) x1 = s[i].x[k];
            if (s[i].y[k] < y0) y0 = s[i].y[k];
            if (s[i].y[k] > y1) y1 = s[i].y[k];
        }
    if (ref_y > 0 && ref_y < y0) y0 = ref_y;
    x0 = 0;
    y0 = log(y0 * 0.9); /* log scale for perplexity */
    y1 = log(y1 * 1.1);
    if (x1 <= x0) x1 = x0 + 1;
    if (y1 <= y0) y1 = y0 + 1;
#define PX(v) (L + ((v) - x0) / (x1 - x0) * (W - L - R))
#define PY(v) (H - B - (log(v) - y0) / (y1 - y0) * (H - T - B))
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%g\" y=\"25\" font-size=\"15\" text-anchor=\"middle\">%s</text>\n", (W - R + L) / 2, title);
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
    fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">%s</text>\n", (W - R + L) / 2, H - 15, xlabel);
    fprintf(f, "<text transform=\"translate(20,%g) rotate(-90)\" text-anchor=\"middle\">%s</text>\n", (H - B + T) / 2, ylabel);
    if (ref_y > 0) {
        fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"gray\" stroke-dasharray=\"5,4\"/>\n", L, PY(ref_y), W - R, PY(ref_y));
        fprintf(f, "<text x=\"%g\" y=\"%g\" fill=\"gray\">%s</text>\n", W - R + 6, PY(ref_y) + 4, ref_label);
    }
    for (i = 0; i < n_series; i++) {
        const char *c = colors[i % 5];
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", c);
        for (k = 0; k < s[i].n; k++) fprintf(f, "%g,%g ", PX(s[i].x[k]), PY(s[i].y[k]));
        fprintf(f, "\"/>\n");
        for (k = 0; k < s[i].n; k++)
            fprintf(f, "<circle cx=\"%g\" cy=\"%g\" r=\"3.5\" fill=\"%s\"/>\n", PX(s[i].x[k]), PY(s[i].y[k]), c);
        fprintf(f, "<rect x=\"%g\" y=\"%g\" width=\"14\" height=\"4\" fill=\"%s\"/>\n", W - R + 6, T + 20.0 * i + 30, c);
        fprintf(f, "<text x=\"%g\" y=\"%g\">%s</text>\n", W - R + 24, T + 20.0 * i + 36, s[i].name);
    }
#undef PX
#undef PY
    fprintf(f, "</svg>\n");
    return fclose(f) ? -1 : 0;
}
