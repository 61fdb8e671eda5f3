/* A tiny SVG line chart (no dependencies): one polyline per series. */
#ifndef SVG_H
#define SVG_H
typedef struct {
    const char *name;
    int n;
    const double *x, *y;
} svg_series;
/* Written atomically (outfile.h); text XML-escaped; points that a log-scale
   axis cannot show (nan, inf, y <= 0) are left out. 0 on success, -1 if the
   file cannot be written. */
int svg_chart(const char *path, const char *title, const char *xlabel, const char *ylabel, const svg_series *s,
              int n_series, double ref_y, const char *ref_label);
#endif
