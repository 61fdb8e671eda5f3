#define _POSIX_C_SOURCE 200809L
#include "outfile.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int outfile_open(outfile *o, const char *path, char *err, size_t errlen) {
    int fd;
    mode_t mask;
    memset(o, 0, sizeof *o);
    if (strlen(path) + 12 > sizeof o->tmp) { snprintf(err, errlen, "output path too long: %s", path); return -1; }
    snprintf(o->path, sizeof o->path, "%s", path);
    snprintf(o->tmp, sizeof o->tmp, "%s.tmp.XXXXXX", path);
    if ((fd = mkstemp(o->tmp)) < 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    mask = umask(0); /* mkstemp makes 0600; give the file the usual 0666 & ~umask */
    umask(mask);
    if (fchmod(fd, 0666 & ~mask) || !(o->fp = fdopen(fd, "wb"))) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        close(fd);
        remove(o->tmp);
        return -1;
    }
    return 0;
}

int outfile_commit(outfile *o, char *err, size_t errlen) {
    int bad = fflush(o->fp) != 0 || ferror(o->fp) || fsync(fileno(o->fp)) != 0;
    int e = errno;
    bad |= fclose(o->fp) != 0;
    o->fp = NULL;
    if (!bad && rename(o->tmp, o->path) == 0) return 0;
    if (!bad) e = errno;
    snprintf(err, errlen, "write error on %s: %s (nothing written)", o->path, strerror(e ? e : EIO));
    remove(o->tmp);
    return -1;
}

void outfile_abort(outfile *o) {
    if (o->fp) fclose(o->fp);
    o->fp = NULL;
    remove(o->tmp);
}

int outfile_check(const char *path, char *err, size_t errlen) {
    outfile o;
    if (outfile_open(&o, path, err, errlen)) return -1;
    outfile_abort(&o);
    return 0;
}

int same_file(const char *a, const char *b) {
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}
