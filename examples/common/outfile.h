/* Output files that appear whole or not at all. Written to a temporary file
   in the target's directory, flushed to disk (fsync), then renamed over the
   target: a killed process, a full disk or a write error leaves the old file
   (or none), never a truncated one that looks valid. */
#ifndef OUTFILE_H
#define OUTFILE_H
#include <stdio.h>

typedef struct {
    FILE *fp;
    char tmp[1024];  /* "<path>.tmp.XXXXXX" while open */
    char path[1024]; /* the target                     */
} outfile;

/* 0, or -1 with err set (directory missing or not writable, path too long) */
int outfile_open(outfile *o, const char *path, char *err, size_t errlen);
/* flush, fsync, close, rename; on any failure the temporary file is removed
   and -1 returned with err set. Call once, after the last write. */
int outfile_commit(outfile *o, char *err, size_t errlen);
/* close and remove the temporary file; the target is untouched */
void outfile_abort(outfile *o);
/* can `path` be written? (creates and removes a temporary file beside it) */
int outfile_check(const char *path, char *err, size_t errlen);
/* 1 if a and b name the same existing file (same device and inode) */
int same_file(const char *a, const char *b);
#endif
