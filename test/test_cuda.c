/*
 * test_cuda.c - CUDA build and device smoke test. On a machine without a GPU
 * (CI) every test skips with "no GPU"; in a CPU-only build it skips with
 * "built without CUDA".
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "test_util.h"
#ifdef NI_USE_CUDA
#include "cuda/cu.h"
#endif

static void test_device_describe(void **state) {
    (void)state;
    tu_require_gpu();
#ifdef NI_USE_CUDA
    char buf[256] = {0};
    assert_int_equal(cu_device_describe(0, buf, sizeof buf), 0);
    printf("device 0: %s\n", buf);
    assert_true(strstr(buf, "sm_") != NULL);
#endif
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_device_describe)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
