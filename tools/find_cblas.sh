#!/bin/sh
# Prints the linker flag of a working CBLAS (openblas, cblas or blas), or nothing.
CC=${1:-cc}
for l in openblas cblas blas; do
  printf '#include <cblas.h>\nint main(void){float a=1,b=1,c=0;cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasTrans,1,1,1,1,&a,1,&b,1,0,&c,1);return c!=1;}\n' \
    | $CC -x c - -o /dev/null -l$l 2>/dev/null && { echo "-l$l"; exit 0; }
done
