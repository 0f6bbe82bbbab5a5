/* test_batchq.c - the per-model queues of dynamic batching (src/worker/batchq.c): capacity, batch sizes, the
 * delay rule (a lone request goes at once; while a batch of its model runs, the others wait up to the delay or
 * until max_batch), arrival order, models taking turns, the next wake-up, drain. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "batchq.h"

static const titan_batchq_rules rules = {.max_batch = 3, .max_delay_ns = 1000, .capacity = 5};
static int jobs[100];

static void test_lone_request_goes_at_once(void **state)
{
    titan_batchq *q = titan_batchq_new();
    void *out[8];
    const char *model = NULL;
    assert_int_equal(titan_batchq_push(q, "m", &rules, &jobs[0], 0), 0);
    assert_int_equal(titan_batchq_len(q), 1);
    /* Nothing of "m" runs: ready now, without waiting for the delay. */
    assert_int_equal(titan_batchq_pop(q, 0, out, 8, &model), 1);
    assert_ptr_equal(out[0], &jobs[0]);
    assert_string_equal(model, "m");
    assert_int_equal(titan_batchq_len(q), 0);
    titan_batchq_free(&q);
    assert_null(q);
}

static void test_waits_while_running(void **state)
{
    titan_batchq *q = titan_batchq_new();
    void *out[8];
    const char *model = NULL;
    titan_batchq_push(q, "m", &rules, &jobs[0], 0);
    assert_int_equal(titan_batchq_pop(q, 0, out, 8, &model), 1); /* runs */
    titan_batchq_push(q, "m", &rules, &jobs[1], 100);
    titan_batchq_push(q, "m", &rules, &jobs[2], 200);
    /* A batch of "m" runs and 2 < max_batch wait: not ready before the oldest has waited 1000 ns. */
    assert_int_equal(titan_batchq_pop(q, 500, out, 8, &model), 0);
    assert_int_equal(titan_batchq_next_ns(q), 1100);
    assert_int_equal(titan_batchq_pop(q, 1100, out, 8, &model), 2);
    assert_ptr_equal(out[0], &jobs[1]);
    assert_ptr_equal(out[1], &jobs[2]);
    /* Once both batches are done, a new request goes at once again. */
    titan_batchq_done(q, "m");
    titan_batchq_done(q, "m");
    titan_batchq_push(q, "m", &rules, &jobs[3], 5000);
    assert_int_equal(titan_batchq_pop(q, 5000, out, 8, &model), 1);
    titan_batchq_free(&q);
}

static void test_full_batch_and_capacity(void **state)
{
    titan_batchq *q = titan_batchq_new();
    void *out[8];
    const char *model = NULL;
    titan_batchq_push(q, "m", &rules, &jobs[0], 0);
    assert_int_equal(titan_batchq_pop(q, 0, out, 8, &model), 1);
    for (int i = 1; i <= 5; i++) assert_int_equal(titan_batchq_push(q, "m", &rules, &jobs[i], 10), 0);
    assert_int_equal(titan_batchq_push(q, "m", &rules, &jobs[6], 10), -EBUSY); /* capacity 5 */
    /* max_batch (3) are waiting: ready before the delay, 3 at a time, in arrival order. */
    assert_int_equal(titan_batchq_pop(q, 11, out, 8, &model), 3);
    assert_ptr_equal(out[0], &jobs[1]);
    assert_ptr_equal(out[2], &jobs[3]);
    /* The ring wraps: more fit again. */
    assert_int_equal(titan_batchq_push(q, "m", &rules, &jobs[7], 12), 0);
    assert_int_equal(titan_batchq_len(q), 3);
    /* The caller's room caps a batch too. */
    assert_int_equal(titan_batchq_pop(q, 12, out, 2, &model), 2);
    assert_ptr_equal(out[0], &jobs[4]);
    assert_ptr_equal(out[1], &jobs[5]);
    titan_batchq_free(&q);
}

static void test_models_take_turns(void **state)
{
    titan_batchq *q = titan_batchq_new();
    void *out[8];
    const char *model = NULL;
    titan_batchq_push(q, "a", &rules, &jobs[0], 0);
    titan_batchq_push(q, "b", &rules, &jobs[1], 0);
    assert_int_equal(titan_batchq_pop(q, 0, out, 8, &model), 1);
    assert_string_equal(model, "a");
    titan_batchq_done(q, "a");
    titan_batchq_push(q, "a", &rules, &jobs[2], 1);
    /* "b" waited first and it is its turn. */
    assert_int_equal(titan_batchq_pop(q, 1, out, 8, &model), 1);
    assert_string_equal(model, "b");
    assert_int_equal(titan_batchq_pop(q, 1, out, 8, &model), 1);
    assert_string_equal(model, "a");
    assert_int_equal(titan_batchq_next_ns(q), -1);
    titan_batchq_free(&q);
}

static int taken;
static void s_take(void *arg, void *job)
{
    taken++;
}

static void test_take_all_and_names(void **state)
{
    titan_batchq *q = titan_batchq_new();
    char name[200];
    memset(name, 'x', sizeof(name) - 1);
    name[sizeof(name) - 1] = 0;
    assert_int_equal(titan_batchq_push(q, name, &rules, &jobs[0], 0), -E2BIG);
    titan_batchq_push(q, "a", &rules, &jobs[0], 0);
    titan_batchq_push(q, "a", &rules, &jobs[1], 0);
    titan_batchq_push(q, "b", &rules, &jobs[2], 0);
    taken = 0;
    titan_batchq_take_all(q, s_take, NULL);
    assert_int_equal(taken, 3);
    assert_int_equal(titan_batchq_len(q), 0);
    titan_batchq_free(&q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lone_request_goes_at_once),
        cmocka_unit_test(test_waits_while_running),
        cmocka_unit_test(test_full_batch_and_capacity),
        cmocka_unit_test(test_models_take_turns),
        cmocka_unit_test(test_take_all_and_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
