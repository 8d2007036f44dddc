/*
 * test_srv_evq.c - the engine event queue of `nanoinfer serve`
 * (server/http/srv_evq.h): a fixed capacity that refuses instead of growing,
 * so that the engine thread waits rather than lose an event (issue 14: a
 * failed realloc dropped finish events and leaked their requests), fields
 * and text copied whole, memory kept across clears, an over-long text cut to
 * the arena only when the queue is empty.
 * Links the server library (libnanoinfer_srv.a).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "engine/util/util.h"
#include "server/http/srv_evq.h"

static eng_event event(uint64_t id, const char *text, int finish) {
    eng_event ev = {.id = id, .index = 1, .token = 7, .text = text,
                    .text_len = text ? (int)strlen(text) : 0, .finish = finish,
                    .n_prompt = 3, .n_generated = 2, .n_cached = 1};
    return ev;
}

static void test_capacity(void **state) {
    (void)state;
    ev_queue q;
    assert_int_equal(srv_evq_alloc(&q, 3, 8), 0);
    ev_rec *v = q.v;
    char *text = q.text;
    eng_event a = event(1, "abc", 0), b = event(2, "def", 0), big = event(3, "ghijkl", 0);
    assert_int_equal(srv_evq_push(&q, &a, 1.0), 0);
    assert_int_equal(srv_evq_push(&q, &b, 2.0), 0);
    assert_int_equal(srv_evq_push(&q, &big, 3.0), NI_ERANGE); /* 3 + 3 + 6 > 8 bytes */
    assert_int_equal(q.n, 2);
    assert_int_equal(q.text_len, 6);
    eng_event fin = event(4, NULL, ENG_FINISH_ERROR);
    fin.error = NI_EIO;
    assert_int_equal(srv_evq_push(&q, &fin, 4.0), 0); /* no text: fits */
    assert_int_equal(srv_evq_push(&q, &fin, 5.0), NI_ERANGE); /* 3 events: full */
    assert_int_equal(q.n, 3);
    assert_int_equal(q.v[0].id, 1);
    assert_int_equal(q.v[1].text_off, 3);
    assert_int_equal(q.v[1].text_len, 3);
    assert_memory_equal(q.text + q.v[1].text_off, "def", 3);
    assert_int_equal(q.v[2].finish, ENG_FINISH_ERROR);
    assert_int_equal(q.v[2].error, NI_EIO);
    assert_int_equal(q.v[2].index, 1);
    assert_int_equal(q.v[2].n_prompt, 3);
    assert_int_equal(q.v[2].n_generated, 2);
    assert_int_equal(q.v[2].n_cached, 1);
    assert_true(q.v[2].t == 4.0);
    assert_int_equal(q.v[2].has_lp, 0);
    srv_evq_clear(&q); /* same memory, empty */
    assert_ptr_equal(q.v, v);
    assert_ptr_equal(q.text, text);
    assert_int_equal(srv_evq_push(&q, &big, 6.0), 0);
    assert_int_equal(q.v[0].text_off, 0);
    assert_int_equal(q.lost + q.cut, 0);
    srv_evq_free(&q);
}

static void test_logprobs(void **state) {
    (void)state;
    ev_queue q;
    assert_int_equal(srv_evq_alloc(&q, 2, 4), 0);
    smp_result lp = {.token = 9, .logprob = -0.5f, .n_top = 1};
    lp.top[0].token = 9;
    eng_event a = event(1, "x", 0);
    a.lp = &lp;
    assert_int_equal(srv_evq_push(&q, &a, 0.0), 0);
    lp.token = 10; /* the event's pointers are only valid during the call */
    assert_int_equal(q.v[0].has_lp, 1);
    assert_int_equal(q.v[0].lp.token, 9);
    assert_int_equal(q.v[0].lp.n_top, 1);
    srv_evq_free(&q);
}

/* A text longer than the whole arena never fits: an empty queue takes it cut
 * to the arena (counted), a non-empty one makes the producer wait first. */
static void test_text_over_arena(void **state) {
    (void)state;
    ev_queue q;
    assert_int_equal(srv_evq_alloc(&q, 4, 4), 0);
    eng_event small = event(1, "a", 0), huge = event(2, "0123456789", ENG_FINISH_LENGTH);
    assert_int_equal(srv_evq_push(&q, &small, 0.0), 0);
    assert_int_equal(srv_evq_push(&q, &huge, 0.0), NI_ERANGE);
    srv_evq_clear(&q);
    assert_int_equal(srv_evq_push(&q, &huge, 0.0), 0);
    assert_int_equal(q.cut, 1);
    assert_int_equal(q.v[0].text_len, 4);
    assert_int_equal(q.v[0].finish, ENG_FINISH_LENGTH); /* the finish itself is kept */
    assert_memory_equal(q.text, "0123", 4);
    assert_int_equal(srv_evq_push(&q, &small, 0.0), NI_ERANGE); /* the arena is full */
    eng_event fin = event(3, NULL, ENG_FINISH_STOP);
    assert_int_equal(srv_evq_push(&q, &fin, 0.0), 0);
    srv_evq_free(&q);
    assert_int_equal(srv_evq_alloc(&q, 0, 4), NI_EINVAL);
    assert_null(q.v);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_capacity),
        cmocka_unit_test(test_logprobs),
        cmocka_unit_test(test_text_over_arena),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
