"""`ThreadChoice`: the count whose recent steps ran fastest runs the next one, and the other
is tried at a bounded cost."""

from __future__ import annotations

from peer.thread_choice import SAMPLES, TRY_SHARE, ThreadChoice


def run(choice: ThreadChoice, cost: dict[int, float], steps: int, crowded: bool) -> list[int]:
    """`steps` steps, each on the count the choice says, costing `cost[count]`."""
    seen = []
    for _ in range(steps):
        threads = choice.threads(crowded=crowded)
        choice.record(threads, cost[threads], crowded=crowded)
        seen.append(threads)
    return seen


def test_one_count_is_all_there_is() -> None:
    choice = ThreadChoice(2)
    choice.record(1, 0.001)  # a count it does not know: ignored
    assert run(choice, {2: 0.5}, 50, crowded=True) == [2] * 50
    assert ThreadChoice(1, 1).counts == (1,)


def test_trying_the_slower_count_costs_a_fiftieth_at_most() -> None:
    """Crowded steps: on 1 thread a step takes 30 ms, on 2 (other processes holding the
    cores) 300 ms. The choice begins on 1, tries 2 once at once, and then the steps it still
    tries on 2 take at most ~2 % of the time."""
    cost = {2: 0.300, 1: 0.030}
    seen = run(ThreadChoice(2, 1), cost, 5000, crowded=True)
    assert seen[:4] == [1, 2, 2, 1]
    tried = seen[SAMPLES * 10 :].count(2) * cost[2]
    total = sum(cost[count] for count in seen[SAMPLES * 10 :])
    assert seen[-1] == 1 and 0 < tried <= total * TRY_SHARE * 1.1


def test_fast_outliers_do_not_move_the_choice() -> None:
    """The median of the last 5 stands for a count: one or two fast steps on 2 threads among
    slow ones leave the choice on 1; a third moves it. (The first step after a change of
    count is not timed.)"""
    choice = ThreadChoice(2, 1)
    for threads, seconds in [(2, 0.3), (2, 0.3), (2, 0.3), (1, 0.9), (1, 0.03), (2, 0.9)]:
        choice.record(threads, seconds)
    for fast in range(3):
        assert choice.chosen() == 1, fast
        choice.record(2, 0.001)
    assert choice.chosen() == 2


def test_alone_the_other_count_is_tried_after_2_percent_of_the_time() -> None:
    """Steps alone begin on the measured count and try the other only once they have run
    50 times as long as their last step (each try: one step to change, one timed)."""
    seen = run(ThreadChoice(2, 1), {2: 0.016, 1: 0.025}, 300, crowded=False)
    assert seen[:100] == [2] * 100 and seen[100:102] == [1, 1] and seen.count(1) == 4


def test_steps_alone_and_crowded_are_timed_apart() -> None:
    """What crowded steps taught (2 threads slow) leaves the choice for steps alone as it was,
    and for steps of other sizes (1; 2; 3 and 4; 5 to 8... tokens)."""
    choice = ThreadChoice(2, 1)
    for threads, seconds in [(2, 0.3), (2, 0.3), (1, 0.9), (1, 0.03)]:
        choice.record(threads, seconds, crowded=True)
    for threads, seconds in [(1, 0.02), (2, 0.9), (2, 0.01)]:
        choice.record(threads, seconds)
    assert (choice.chosen(crowded=True), choice.chosen()) == (1, 2)
    assert (choice.threads(crowded=True), choice.threads()) == (1, 2)
    for threads, seconds in [(2, 0.9), (2, 0.3), (1, 0.9), (1, 0.03)]:
        choice.record(threads, seconds, size=3)
    assert [choice.chosen(size) for size in (1, 2, 3, 4, 5)] == [2, 2, 1, 1, 2]


def test_the_first_step_after_a_change_of_count_is_not_timed() -> None:
    """Crowded steps begin on 1 thread, whose first step is slow (40 ms; then 25 ms, and 16
    ms on 2 threads), and changing the count costs the step after it 50 ms more. The try of
    2 threads runs two steps and times the second, so it sees 2 threads as they run, not as
    they start, and the choice moves there."""
    choice, seen, ran = ThreadChoice(2, 1), [], 1
    for step in range(600):
        threads = choice.threads(crowded=True)
        seconds = 0.040 if step == 0 else {2: 0.016, 1: 0.025}[threads]
        choice.record(threads, seconds + (0.050 if threads != ran else 0), crowded=True)
        seen.append(threads)
        ran = threads
    assert seen[:4] == [1, 2, 2, 2] and seen[-100:].count(2) >= 90
    assert choice.chosen(crowded=True) == 2
