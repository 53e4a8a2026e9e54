/*
 * Tests of common/node_client against a real hbcd (and a TLS peer that never
 * answers), run by test_node_client.py: replies matched to requests, refusals
 * mapped to codes, callbacks exactly once (cancelled on close), the in-flight
 * bound with on_drain, the node-id check and the request timeout.
 *
 * Environment: HBC_NODE_ADDR (the node), HBC_SILENT_ADDR (a TLS server that
 * completes handshakes and never replies), HBC_TLS_CA, HBC_TLS_CERT,
 * HBC_TLS_KEY (a client certificate of the node's CA).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "common/alloc.h"
#include "common/crypto.h"
#include "common/erasure.h"
#include "common/frame.h"
#include "common/log.h"
#include "common/node_client.h"
#include "common/tls.h"

/* Bound on loop iterations while waiting for one condition (each blocks for I/O or a timer). */
#define MAX_SPINS 200000

/* What one request's callback saw. */
struct rec {
    int calls;         /* times the callback fired */
    int status;        /* its status */
    char msg[512];     /* its message */
    Hbc__Frame *reply; /* the reply, kept (node_client_take_reply) */
};

/* What the connection's callbacks saw. */
struct conn_rec {
    int connects;       /* on_connect calls */
    int connect_status; /* its status */
    int drains;         /* on_drain calls */
    int closes;         /* on_close calls */
    int close_status;   /* its status */
    char reason[256];   /* its reason */
    int recs_at_close;  /* request callbacks that had fired when on_close came */
    struct rec *watch;  /* requests to count at close */
    size_t nwatch;      /* how many */
};

struct fixture {
    uv_loop_t loop;      /* the test's loop */
    struct tls_ctx *tls; /* client certificate */
    struct conn_rec cr;  /* callbacks of the connection under test */
};

static const char *env(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') {
        fail_msg("%s is not set (run through test_node_client.py)", name);
    }
    return v;
}

static void rec_cb(struct node_client *nc, struct node_client_result *res, void *arg)
{
    (void)nc;
    struct rec *r = arg;
    r->calls++;
    r->status = res->status;
    snprintf(r->msg, sizeof r->msg, "%s", res->message);
    if (res->status == 0) {
        r->reply = node_client_take_reply(res);
    }
}

static void on_connect(struct node_client *nc, int status)
{
    struct conn_rec *cr = node_client_data(nc);
    cr->connects++;
    cr->connect_status = status;
}

static void on_drain(struct node_client *nc)
{
    struct conn_rec *cr = node_client_data(nc);
    cr->drains++;
}

static void on_close(struct node_client *nc, int status, const char *reason)
{
    struct conn_rec *cr = node_client_data(nc);
    cr->closes++;
    cr->close_status = status;
    snprintf(cr->reason, sizeof cr->reason, "%s", reason);
    for (size_t i = 0; i < cr->nwatch; i++) {
        cr->recs_at_close += cr->watch[i].calls;
    }
}

static const struct node_client_cbs cbs = {
    .on_connect = on_connect, .on_drain = on_drain, .on_close = on_close};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    struct tls_ctx_opts o = {.ca_file = env("HBC_TLS_CA"),
                             .cert_file = env("HBC_TLS_CERT"),
                             .key_file = env("HBC_TLS_KEY")};
    struct err e;
    if (tls_ctx_new(&o, &f->tls, &e) != 0) {
        fail_msg("%s", e.msg);
    }
    *state = f;
    return 0;
}

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) {
        uv_close(h, NULL);
    }
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    /* A passing test closed its client; after a failed assertion one may still be open. */
    for (int i = 0; i < 1000 && uv_loop_alive(&f->loop); i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
    }
    if (uv_loop_alive(&f->loop)) {
        uv_walk(&f->loop, close_walk_cb, NULL);
        uv_run(&f->loop, UV_RUN_DEFAULT);
        fail_msg("the test left handles open");
    }
    assert_int_equal(uv_loop_close(&f->loop), 0); /* nothing left behind */
    tls_ctx_free(f->tls);
    free(f);
    return 0;
}

/* Run the loop until *counter reaches want (bounded). */
static void run_until(struct fixture *f, const int *counter, int want)
{
    for (int i = 0; i < MAX_SPINS && *counter < want; i++) {
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    assert_true(*counter >= want);
}

static struct node_client *connect_to(struct fixture *f, const char *addr,
                                      const struct node_client_opts *o)
{
    struct node_client *nc = NULL;
    struct err e;
    if (node_client_connect(&f->loop, f->tls, addr, o, &cbs, &f->cr, &nc, &e) != 0) {
        fail_msg("%s", e.msg);
    }
    return nc;
}

/* A real encoded shard of a random payload; *blob is hbc_free'd by the caller. */
static void make_shard(uint8_t vault[16], uint8_t chunk[32], unsigned index, size_t payload_len,
                       uint8_t **blob, size_t *len)
{
    uint8_t *payload = hbc_malloc(payload_len);
    assert_non_null(payload);
    assert_int_equal(crypto_random(payload, payload_len, NULL), 0);
    struct erasure_shard_info info = {.k = 4,
                                      .m = 2,
                                      .index = index,
                                      .object_length = 4 * payload_len,
                                      .shard_length = payload_len};
    memcpy(info.vault_id, vault, 16);
    memcpy(info.chunk_id, chunk, 32);
    assert_int_equal(erasure_shard_encode(&info, payload, blob, len, NULL), 0);
    hbc_free(payload);
}

static void rec_release(struct rec *r)
{
    frame_free(r->reply);
    r->reply = NULL;
}

/* Put, get, have and status answered and matched to their requests. */
static void test_requests_are_answered_and_matched(void **state)
{
    struct fixture *f = *state;
    struct node_client *nc = connect_to(f, env("HBC_NODE_ADDR"), NULL);
    uint8_t vault[16], chunk[32], absent[32];
    crypto_random(vault, sizeof vault, NULL);
    crypto_random(chunk, sizeof chunk, NULL);
    crypto_random(absent, sizeof absent, NULL);
    uint8_t *blob;
    size_t len;
    make_shard(vault, chunk, 5, 100000, &blob, &len);
    struct err e;
    struct rec put = {0}, early = {0}, status = {0};
    /* Issued before the handshake completes: parked, then sent in order. */
    struct node_client_shard sh = {vault, chunk, 5, blob, len, false, NULL, 0};
    assert_int_equal(node_client_put_shards(nc, &sh, 1, rec_cb, &put, &e), 0);
    assert_int_equal(node_client_status(nc, rec_cb, &early, &e), 0);
    assert_false(node_client_is_open(nc));
    run_until(f, &early.calls, 1);
    run_until(f, &put.calls, 1);
    assert_int_equal(f->cr.connects, 1);
    assert_int_equal(f->cr.connect_status, 0);
    assert_true(node_client_is_open(nc));
    assert_int_equal(early.status, 0);
    assert_int_equal(put.status, 0);
    assert_int_equal(put.reply->put_shards_reply->stored, 1);
    assert_int_equal(node_client_status(nc, rec_cb, &status, &e), 0);
    run_until(f, &status.calls, 1);
    assert_int_equal(status.status, 0);
    assert_string_equal(status.reply->status_reply->node_id, "n1");
    assert_true(status.reply->status_reply->shard_count >= 1);

    struct rec have = {0}, get = {0};
    uint8_t ids[2][32];
    memcpy(ids[0], absent, 32);
    memcpy(ids[1], chunk, 32);
    assert_int_equal(
        node_client_have_chunks(nc, vault, (const uint8_t(*)[32])ids, 2, rec_cb, &have, &e), 0);
    struct node_client_key keys[2] = {{vault, chunk, 5}, {vault, chunk, 4}};
    assert_int_equal(node_client_get_shards(nc, keys, 2, rec_cb, &get, &e), 0);
    run_until(f, &get.calls, 1);
    run_until(f, &have.calls, 1);
    assert_int_equal(have.status, 0);
    assert_false(have.reply->have_chunks_reply->present[0]);
    assert_true(have.reply->have_chunks_reply->present[1]);
    assert_int_equal(get.status, 0);
    const Hbc__GetShardsReply *g = get.reply->get_shards_reply;
    assert_int_equal(g->n_shards, 1);
    assert_int_equal(g->n_missing, 1);
    assert_int_equal(g->shards[0]->index, 5);
    assert_int_equal(g->shards[0]->data.len, len);
    assert_memory_equal(g->shards[0]->data.data, blob, len);
    assert_int_equal(g->missing[0]->index, 4);

    struct node_client_stats st;
    node_client_stats(nc, &st);
    assert_int_equal(st.requests_inflight, 0);
    assert_int_equal(st.requests_sent, 5);
    assert_int_equal(st.replies, 5);
    node_client_close(nc, 0, NULL);
    run_until(f, &f->cr.closes, 1);
    assert_int_equal(f->cr.close_status, 0);
    assert_int_equal(put.calls + early.calls + status.calls + have.calls + get.calls, 5);
    rec_release(&put);
    rec_release(&early);
    rec_release(&status);
    rec_release(&have);
    rec_release(&get);
    hbc_free(blob);
}

/* The node's error frames come back as HBC_E* codes with its message; the connection goes on. */
static void test_refusals_are_mapped_to_codes(void **state)
{
    struct fixture *f = *state;
    struct node_client *nc = connect_to(f, env("HBC_NODE_ADDR"), NULL);
    uint8_t vault[16], chunk[32];
    crypto_random(vault, sizeof vault, NULL);
    crypto_random(chunk, sizeof chunk, NULL);
    uint8_t *blob;
    size_t len;
    make_shard(vault, chunk, 1, 1000, &blob, &len);
    struct err e;
    struct rec wrong_index = {0}, garbage = {0}, after = {0};
    /* The blob's header says index 1; the request says 2. */
    struct node_client_shard sh = {vault, chunk, 2, blob, len, false, NULL, 0};
    assert_int_equal(node_client_put_shards(nc, &sh, 1, rec_cb, &wrong_index, &e), 0);
    uint8_t junk[64] = {1, 2, 3};
    struct node_client_shard bad = {vault, chunk, 1, junk, sizeof junk, false, NULL, 0};
    assert_int_equal(node_client_put_shards(nc, &bad, 1, rec_cb, &garbage, &e), 0);
    assert_int_equal(node_client_status(nc, rec_cb, &after, &e), 0);
    run_until(f, &after.calls, 1);
    run_until(f, &garbage.calls, 1);
    run_until(f, &wrong_index.calls, 1);
    assert_int_equal(wrong_index.status, HBC_EINVAL);
    assert_non_null(strstr(wrong_index.msg, "names another vault, chunk or index"));
    assert_null(wrong_index.reply);
    assert_int_equal(garbage.status, HBC_EINVAL);
    assert_int_equal(after.status, 0);
    struct node_client_stats st;
    node_client_stats(nc, &st);
    assert_int_equal(st.node_errors, 2);
    node_client_close(nc, 0, NULL);
    run_until(f, &f->cr.closes, 1);
    rec_release(&after);
    hbc_free(blob);
}

/*
 * A shard sent with its trailer left to the node (sha256_unset) is stored
 * exactly as the hashed encoding; a zero trailer without the flag is
 * corrupt, and the flag on a shard whose trailer is set is refused.
 */
static void test_node_fills_in_an_unset_trailer(void **state)
{
    struct fixture *f = *state;
    struct node_client *nc = connect_to(f, env("HBC_NODE_ADDR"), NULL);
    uint8_t vault[16], chunk[32];
    crypto_random(vault, sizeof vault, NULL);
    crypto_random(chunk, sizeof chunk, NULL);
    uint8_t *blob;
    size_t len;
    make_shard(vault, chunk, 3, 70000, &blob, &len);
    uint8_t *unset = hbc_malloc(len);
    assert_non_null(unset);
    memcpy(unset, blob, len);
    memset(unset + len - ERASURE_SHARD_TRAILER, 0, ERASURE_SHARD_TRAILER);
    struct err e;
    struct rec unflagged = {0}, filled = {0}, set_flagged = {0}, get = {0};
    struct node_client_shard no_flag = {vault, chunk, 3, unset, len, false, NULL, 0};
    assert_int_equal(node_client_put_shards(nc, &no_flag, 1, rec_cb, &unflagged, &e), 0);
    run_until(f, &unflagged.calls, 1);
    assert_int_equal(unflagged.status, HBC_ECORRUPT);
    struct node_client_shard sh = {vault, chunk, 3, unset, len, true, NULL, 0};
    assert_int_equal(node_client_put_shards(nc, &sh, 1, rec_cb, &filled, &e), 0);
    run_until(f, &filled.calls, 1);
    assert_int_equal(filled.status, 0);
    assert_int_equal(filled.reply->put_shards_reply->stored, 1);
    /* The trailer is filled in on the node, not in our buffer. */
    assert_int_equal(unset[len - 1] | unset[len - 2], 0);
    struct node_client_shard wrong = {vault, chunk, 3, blob, len, true, NULL, 0};
    assert_int_equal(node_client_put_shards(nc, &wrong, 1, rec_cb, &set_flagged, &e), 0);
    run_until(f, &set_flagged.calls, 1);
    assert_int_equal(set_flagged.status, HBC_EINVAL);
    assert_non_null(strstr(set_flagged.msg, "trailer to fill in is not zero"));
    struct node_client_key key = {vault, chunk, 3};
    assert_int_equal(node_client_get_shards(nc, &key, 1, rec_cb, &get, &e), 0);
    run_until(f, &get.calls, 1);
    assert_int_equal(get.status, 0);
    const Hbc__GetShardsReply *g = get.reply->get_shards_reply;
    assert_int_equal(g->n_shards, 1);
    assert_int_equal(g->shards[0]->data.len, len);
    assert_memory_equal(g->shards[0]->data.data, blob, len);
    assert_int_equal(erasure_shard_decode(g->shards[0]->data.data, len, NULL, NULL, &e), 0);
    node_client_close(nc, 0, NULL);
    run_until(f, &f->cr.closes, 1);
    rec_release(&filled);
    rec_release(&get);
    hbc_free(unset);
    hbc_free(blob);
}

/* Closing cancels every request exactly once, before on_close; later requests are refused. */
static void test_close_cancels_each_request_once(void **state)
{
    struct fixture *f = *state;
    struct node_client *nc = connect_to(f, env("HBC_NODE_ADDR"), NULL);
    struct rec first = {0};
    struct err e;
    assert_int_equal(node_client_status(nc, rec_cb, &first, &e), 0);
    run_until(f, &first.calls, 1);
    struct rec r[10];
    memset(r, 0, sizeof r);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(node_client_status(nc, rec_cb, &r[i], &e), 0);
    }
    f->cr.watch = r;
    f->cr.nwatch = 10;
    node_client_close(nc, 0, "test is done");
    for (int i = 0; i < 10; i++) {
        assert_int_equal(r[i].calls, 0); /* never from inside node_client_close() */
    }
    struct rec refused = {0};
    assert_int_equal(node_client_status(nc, rec_cb, &refused, &e), HBC_ECANCELED);
    run_until(f, &f->cr.closes, 1);
    assert_int_equal(f->cr.recs_at_close, 10); /* all fired before on_close */
    for (int i = 0; i < 10; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].status, HBC_ECANCELED);
        assert_non_null(strstr(r[i].msg, "test is done"));
    }
    assert_int_equal(refused.calls, 0);
    rec_release(&first);
}

/* max_requests bounds what is in flight: EBUSY when full, on_drain when there is room. */
static void test_full_client_refuses_then_drains(void **state)
{
    struct fixture *f = *state;
    struct node_client_opts o = {.max_requests = 2};
    struct node_client *nc = connect_to(f, env("HBC_NODE_ADDR"), &o);
    struct rec r[3];
    memset(r, 0, sizeof r);
    struct err e;
    assert_false(node_client_full(nc));
    assert_int_equal(node_client_status(nc, rec_cb, &r[0], &e), 0);
    assert_int_equal(node_client_status(nc, rec_cb, &r[1], &e), 0);
    assert_true(node_client_full(nc));
    assert_int_equal(node_client_status(nc, rec_cb, &r[2], &e), HBC_EBUSY);
    run_until(f, &f->cr.drains, 1);
    assert_false(node_client_full(nc));
    assert_int_equal(node_client_status(nc, rec_cb, &r[2], &e), 0);
    run_until(f, &r[2].calls, 1);
    run_until(f, &r[1].calls, 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].status, 0);
        rec_release(&r[i]);
    }
    node_client_close(nc, 0, NULL);
    run_until(f, &f->cr.closes, 1);
}

/*
 * max_queued: full while a request's bytes wait for the kernel, on_drain once
 * they are taken, although far fewer requests than max_requests are in flight.
 */
static void test_max_queued_waits_for_the_kernel(void **state)
{
    struct fixture *f = *state;
    struct node_client_opts o = {.max_requests = 64, .max_queued = 1};
    struct node_client *nc = connect_to(f, env("HBC_NODE_ADDR"), &o);
    run_until(f, &f->cr.connects, 1);
    assert_int_equal(f->cr.connect_status, 0);
    struct rec r[3];
    memset(r, 0, sizeof r);
    struct err e;
    assert_false(node_client_full(nc));
    assert_int_equal(node_client_status(nc, rec_cb, &r[0], &e), 0);
    struct node_client_stats st;
    node_client_stats(nc, &st);
    assert_true(st.tls_queued > 0);
    assert_true(node_client_full(nc));
    assert_int_equal(node_client_status(nc, rec_cb, &r[1], &e), HBC_EBUSY);
    run_until(f, &f->cr.drains, 1);
    assert_false(node_client_full(nc));
    assert_int_equal(node_client_status(nc, rec_cb, &r[1], &e), 0);
    run_until(f, &f->cr.drains, 2);
    assert_int_equal(node_client_status(nc, rec_cb, &r[2], &e), 0);
    for (int i = 0; i < 3; i++) {
        run_until(f, &r[i].calls, 1);
        assert_int_equal(r[i].status, 0);
        rec_release(&r[i]);
    }
    node_client_close(nc, 0, NULL);
    run_until(f, &f->cr.closes, 1);
}

/* A node whose certificate names another node is refused; parked requests are cancelled. */
static void test_wrong_node_id_is_refused(void **state)
{
    struct fixture *f = *state;
    struct node_client_opts o = {.node_id = "n2"};
    struct node_client *nc = connect_to(f, env("HBC_NODE_ADDR"), &o);
    struct rec r = {0};
    struct err e;
    assert_int_equal(node_client_status(nc, rec_cb, &r, &e), 0);
    run_until(f, &f->cr.closes, 1);
    assert_int_equal(f->cr.connects, 1);
    assert_int_equal(f->cr.connect_status, HBC_EAUTH);
    assert_int_equal(f->cr.close_status, HBC_EAUTH);
    assert_non_null(strstr(f->cr.reason, "'n1', not 'n2'"));
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, HBC_ECANCELED);
}

/* Nothing listening: on_connect with the error, requests cancelled, on_close last. */
static void test_refused_connection(void **state)
{
    struct fixture *f = *state;
    /* Port 1 on loopback: nothing listens there and an unprivileged test cannot bind it. */
    struct node_client *nc = connect_to(f, "127.0.0.1:1", NULL);
    struct rec r = {0};
    struct err e;
    assert_int_equal(node_client_status(nc, rec_cb, &r, &e), 0);
    run_until(f, &f->cr.closes, 1);
    assert_int_equal(f->cr.connect_status, -ECONNREFUSED);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, HBC_ECANCELED);
    struct node_client *none = NULL;
    assert_int_equal(
        node_client_connect(&f->loop, f->tls, "not-an-address", NULL, &cbs, &f->cr, &none, &e),
        HBC_EINVAL);
    assert_null(none);
}

/* A peer that takes requests and never answers is dropped after request_timeout_ms. */
static void test_request_timeout_closes_the_connection(void **state)
{
    struct fixture *f = *state;
    struct node_client_opts o = {.request_timeout_ms = 300};
    struct node_client *nc = connect_to(f, env("HBC_SILENT_ADDR"), &o);
    struct rec r = {0};
    struct err e;
    assert_int_equal(node_client_status(nc, rec_cb, &r, &e), 0);
    run_until(f, &f->cr.closes, 1);
    assert_int_equal(f->cr.connect_status, 0);
    assert_int_equal(f->cr.close_status, -ETIMEDOUT);
    assert_non_null(strstr(f->cr.reason, "unanswered"));
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, HBC_ECANCELED);
}

int main(void)
{
    log_init_from_env();
    alarm(120); /* a hang fails the test instead of stalling the suite */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_requests_are_answered_and_matched, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals_are_mapped_to_codes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_node_fills_in_an_unset_trailer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_cancels_each_request_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_client_refuses_then_drains, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_queued_waits_for_the_kernel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_node_id_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_timeout_closes_the_connection, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
