/* Bench-machine only: lets the faiss-gpu-cu12 wheel load where only CUDA 13 libraries exist.
 *
 * faiss links libcublas.so.12 / libcublasLt.so.12 and calls eight cuBLAS functions whose
 * signatures and enum values are the same in CUDA 12 and 13. This library takes the CUDA 12
 * name and forwards those eight calls to libcublas.so.13. Real installs never need it: pip's
 * faiss-gpu-cu12 brings the CUDA 12 libraries with it (see docs/throughput.md).
 *
 *   gcc -shared -fPIC -O2 -o libcublas.so.12 -Wl,-soname,libcublas.so.12 \
 *       -Wl,--version-script=cublas12.map cublas12_shim.c -ldl
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static void *target(const char *name) {
    static void *lib;
    if (!lib && !(lib = dlopen("libcublas.so.13", RTLD_NOW | RTLD_GLOBAL))) {
        fprintf(stderr, "cublas12 shim: %s\n", dlerror());
        abort();
    }
    void *f = dlsym(lib, name);
    if (!f) {
        fprintf(stderr, "cublas12 shim: libcublas.so.13 has no %s\n", name);
        abort();
    }
    return f;
}

#define FORWARD(name, params, args)                    \
    int name params {                                  \
        static int(*f) params;                         \
        if (!f) f = (int(*) params)target(#name);      \
        return f args;                                 \
    }

typedef void *H; /* cublasHandle_t */

FORWARD(cublasCreate_v2, (H *h), (h))
FORWARD(cublasDestroy_v2, (H h), (h))
FORWARD(cublasSetStream_v2, (H h, void *stream), (h, stream))
FORWARD(cublasGetMathMode, (H h, int *mode), (h, mode))
FORWARD(cublasSetMathMode, (H h, int mode), (h, mode))
FORWARD(cublasSgemmEx,
        (H h, int ta, int tb, int m, int n, int k, const float *alpha, const void *A, int at, int lda,
         const void *B, int bt, int ldb, const float *beta, void *C, int ct, int ldc),
        (h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc))
FORWARD(cublasGemmEx,
        (H h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A, int at, int lda,
         const void *B, int bt, int ldb, const void *beta, void *C, int ct, int ldc, int compute, int algo),
        (h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc, compute, algo))
FORWARD(cublasGemmStridedBatchedEx,
        (H h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A, int at, int lda,
         long long sa, const void *B, int bt, int ldb, long long sb, const void *beta, void *C, int ct,
         int ldc, long long sc, int batch, int compute, int algo),
        (h, ta, tb, m, n, k, alpha, A, at, lda, sa, B, bt, ldb, sb, beta, C, ct, ldc, sc, batch, compute, algo))
