/* test_fairq.c - cmocka tests of the per-client round-robin queue. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "fairq.h"

static void test_fifo_within_client(void **state)
{
    (void)state;
    titan_fairq *q = titan_fairq_new();
    int items[5];
    for (int i = 0; i < 5; i++) assert_int_equal(titan_fairq_push(q, "a", 1, &items[i]), 0);
    assert_int_equal(titan_fairq_len(q), 5);
    assert_int_equal(titan_fairq_client_len(q, "a", 1), 5);
    for (int i = 0; i < 5; i++) assert_ptr_equal(titan_fairq_pop(q), &items[i]);
    assert_null(titan_fairq_pop(q));
    assert_int_equal(titan_fairq_clients(q), 0);
    titan_fairq_destroy(&q);
    assert_null(q);
}

static void test_round_robin_between_clients(void **state)
{
    (void)state;
    titan_fairq *q = titan_fairq_new();
    int flood[100], quiet[2];
    /* one client floods first, the other comes later: it must not wait for the whole flood */
    for (int i = 0; i < 100; i++) assert_int_equal(titan_fairq_push(q, "flood", 5, &flood[i]), 0);
    assert_int_equal(titan_fairq_push(q, "quiet", 5, &quiet[0]), 0);
    assert_int_equal(titan_fairq_push(q, "quiet", 5, &quiet[1]), 0);
    assert_int_equal(titan_fairq_clients(q), 2);
    int quiet_seen = 0, pops = 0;
    while (quiet_seen < 2) {
        void *it = titan_fairq_pop(q);
        assert_non_null(it);
        pops++;
        if (it == &quiet[0] || it == &quiet[1]) quiet_seen++;
    }
    assert_true(pops <= 4);
    assert_int_equal(titan_fairq_client_len(q, "flood", 5), 100 - (pops - 2));
    assert_int_equal(titan_fairq_client_len(q, "quiet", 5), 0);
    titan_fairq_destroy(&q); /* frees what is left without touching the items */
}

/* peek names what pop returns next, in every client's turn, and leaves the queue as it was. */
static void test_peek_is_next_pop(void **state)
{
    (void)state;
    titan_fairq *q = titan_fairq_new();
    assert_null(titan_fairq_peek(q));
    assert_null(titan_fairq_peek(NULL));
    int a[3], b[2];
    for (int i = 0; i < 3; i++) assert_int_equal(titan_fairq_push(q, "a", 1, &a[i]), 0);
    for (int i = 0; i < 2; i++) assert_int_equal(titan_fairq_push(q, "b", 1, &b[i]), 0);
    for (size_t left = 5; left > 0; left--) {
        void *next = titan_fairq_peek(q);
        assert_non_null(next);
        assert_ptr_equal(titan_fairq_peek(q), next);
        assert_int_equal(titan_fairq_len(q), left);
        assert_ptr_equal(titan_fairq_pop(q), next);
    }
    assert_null(titan_fairq_peek(q));
    titan_fairq_destroy(&q);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    titan_fairq *q = titan_fairq_new();
    int x;
    unsigned char key[TITAN_FAIRQ_MAX_KEY + 1] = {0};
    assert_int_equal(titan_fairq_push(q, "k", 0, &x), -EINVAL);
    assert_int_equal(titan_fairq_push(q, key, sizeof key, &x), -EINVAL);
    assert_int_equal(titan_fairq_push(q, "k", 1, NULL), -EINVAL);
    assert_int_equal(titan_fairq_push(q, key, TITAN_FAIRQ_MAX_KEY, &x), 0);
    assert_int_equal(titan_fairq_client_len(q, key, TITAN_FAIRQ_MAX_KEY), 1);
    assert_null(titan_fairq_pop(NULL));
    titan_fairq_destroy(&q);
    titan_fairq_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fifo_within_client),
        cmocka_unit_test(test_round_robin_between_clients),
        cmocka_unit_test(test_peek_is_next_pop),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
