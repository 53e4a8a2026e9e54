/* Unit tests for hbcd's configuration file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "node/config.h"

static char path[64];

static int write_config(const char *text)
{
    strcpy(path, "/tmp/hbc-config-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) {
        return -1;
    }
    size_t n = strlen(text);
    ssize_t w = write(fd, text, n);
    close(fd);
    return w == (ssize_t)n ? 0 : -1;
}

#define VALID                                                                                      \
    "[node]\nid = n1\ndata_dir = /tmp/x\nsite = s1\n"                                              \
    "[data]\nlisten = 127.0.0.1:7100\n"                                                            \
    "[tls]\nca = ca.crt\ncert = n1.crt\nkey = n1.key\n"

static void load_expect_error(const char *text, const char *needle)
{
    struct node_config cfg;
    struct err e;
    err_clear(&e);
    assert_int_equal(write_config(text), 0);
    int rv = node_config_load(&cfg, path, &e);
    unlink(path);
    assert_int_equal(rv, HBC_ECONFIG);
    if (strstr(e.msg, needle) == NULL) {
        fail_msg("message '%s' lacks '%s'", e.msg, needle);
    }
    assert_non_null(strstr(e.msg, path));
}

static void test_valid_file_gets_defaults(void **state)
{
    (void)state;
    struct node_config cfg;
    struct err e;
    assert_int_equal(write_config(VALID "[store]\nsegment_size = 8M\n[node]\nworm = yes\n"), 0);
    int rv = node_config_load(&cfg, path, &e);
    unlink(path);
    assert_int_equal(rv, 0);
    assert_string_equal(cfg.node_id, "n1");
    assert_string_equal(cfg.listen, "127.0.0.1:7100");
    assert_string_equal(cfg.media, "ssd");
    assert_true(cfg.worm);
    assert_int_equal(cfg.segment_size, 8ULL << 20);
    assert_int_equal(cfg.max_frame, 64ULL << 20);
    assert_int_equal(cfg.handshake_timeout, 10);
    node_config_free(&cfg);
}

static void test_bad_files_name_line_and_reason(void **state)
{
    (void)state;
    load_expect_error(VALID "[node]\nbogus = 1\n", ":12: unknown key 'bogus' in [node]");
    load_expect_error(VALID "[nope]\nx = 1\n", ":12: unknown section [nope]");
    load_expect_error(VALID "[data]\nmax_frame = 12Q\n", "data.max_frame: '12Q' is not a size");
    load_expect_error(VALID "[data]\nmax_frame = 1\n", "out of range");
    load_expect_error(VALID "[node]\nmedia = floppy\n", "'floppy' is not one of");
    load_expect_error(VALID "[node]\nworm = maybe\n", "'maybe' is not true or false");
    load_expect_error("[node]\nid = n1\n", "required key node.data_dir is missing");
    load_expect_error(VALID "[node]\nid = n2\n", "node.id is set twice");
    load_expect_error("[node]\nid = n1\ndata_dir = /x\nsite = s\n[data]\nlisten = localhost:1\n",
                      "not an IPv4 address");
    load_expect_error(VALID "this is not ini\n", ":11: syntax error");
}

static void test_size_parser(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(config_parse_size("64M", &v), 0);
    assert_int_equal(v, 64ULL << 20);
    assert_int_equal(config_parse_size("2GiB", &v), 0);
    assert_int_equal(v, 2ULL << 30);
    assert_int_equal(config_parse_size("17", &v), 0);
    assert_int_equal(v, 17);
    assert_int_equal(config_parse_size("-1", &v), HBC_EINVAL);
    assert_int_equal(config_parse_size("", &v), HBC_EINVAL);
    assert_int_equal(config_parse_size("99999999999999999999T", &v), HBC_EINVAL);
    assert_int_equal(config_parse_size("9999999999T", &v), HBC_EINVAL);
}

static void test_missing_file(void **state)
{
    (void)state;
    struct node_config cfg;
    struct err e;
    assert_true(node_config_load(&cfg, "/nonexistent/hbcd.conf", &e) < 0);
    assert_non_null(strstr(e.msg, "/nonexistent/hbcd.conf: cannot open"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_file_gets_defaults),
        cmocka_unit_test(test_bad_files_name_line_and_reason),
        cmocka_unit_test(test_size_parser),
        cmocka_unit_test(test_missing_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
