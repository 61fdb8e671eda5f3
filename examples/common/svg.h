/* A tiny SVG line chart (no dependencies): one polyline per series. */
#ifndef SVG_H
#define SVG_H
typedef struct {
    const char *name;
    int n;
    const double *x, *y;
} svg_series;
/* 0 on success */
int svg_chart(const char *path, const char *title, const char *xlabel, const char *ylabel, const svg_series *s,
              int n_series, double ref_y, const char *ref_label);
#endif
