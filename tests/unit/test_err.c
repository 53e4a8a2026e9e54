/* Unit tests for the error table and message wrapping. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/alloc.h"
#include "common/err.h"

static void test_codes_have_distinct_names_and_text(void **state)
{
    (void)state;
    static const int codes[] = {
#define CODE_(name, value, text) (value),
        HBC_ERRNO_MAP(CODE_)
#undef CODE_
    };
    size_t n = sizeof codes / sizeof codes[0];
    for (size_t i = 0; i < n; i++) {
        assert_true(codes[i] < -4000);
        assert_string_not_equal(hbc_strerror(codes[i]), "unknown error");
        for (size_t j = i + 1; j < n; j++) {
            assert_int_not_equal(codes[i], codes[j]);
            assert_string_not_equal(hbc_errname(codes[i]), hbc_errname(codes[j]));
        }
    }
    assert_string_equal(hbc_errname(-ENOENT), "ENOENT");
    assert_string_equal(hbc_strerror(-ENOSPC), strerror(ENOSPC));
    assert_string_equal(hbc_errname(HBC_ECORRUPT), "HBC_ECORRUPT");
}

static void test_wrap_prefixes_context(void **state)
{
    (void)state;
    struct err e;
    err_clear(&e);
    assert_int_equal(err_set(&e, -ENOSPC, "fsync"), -ENOSPC);
    assert_int_equal(err_wrap(&e, "store"), -ENOSPC);
    assert_int_equal(err_wrap(&e, "put shard %d", 3), -ENOSPC);
    assert_string_equal(e.msg, "put shard 3: store: fsync: No space left on device");
    assert_int_equal(err_set(NULL, HBC_EINVAL, "ignored"), HBC_EINVAL);
    /* The failing code survives a NULL err, which err_wrap() cannot know. */
    assert_int_equal(err_wrap_code(NULL, HBC_ENOTFOUND, "lookup"), HBC_ENOTFOUND);
    assert_int_equal(err_wrap_code(&e, HBC_ECORRUPT, "get %s", "x"), HBC_ECORRUPT);
    assert_string_equal(e.msg, "get x: put shard 3: store: fsync: No space left on device");
}

static void test_alloc_fault_injection(void **state)
{
    (void)state;
    alloc_fault_after(1);
    void *a = hbc_malloc(8);
    void *b = hbc_malloc(8);
    alloc_fault_reset();
    assert_non_null(a);
    assert_null(b);
    hbc_free(a);
    hbc_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codes_have_distinct_names_and_text),
        cmocka_unit_test(test_wrap_prefixes_context),
        cmocka_unit_test(test_alloc_fault_injection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
