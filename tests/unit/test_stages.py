"""The pool's pipeline parts on their own: a bounded stage with back-pressure, what a stop leaves,
the wake-up signal, the look-ahead that readies each item once, and the precedence that holds
deliveries back while slots are refilled."""

from __future__ import annotations

import threading

from batch_runner.stages import Lookahead, Precedence, Signal, Stage

JOIN_S = 30  # a bound so a broken stage fails the test instead of hanging it


def _gated_stage(stop: threading.Event, capacity: int = 2) -> tuple[Stage[int], list[int], threading.Event]:
    done: list[int] = []
    gate = threading.Event()

    def work(item: int) -> bool:
        gate.wait(JOIN_S)
        done.append(item)
        return True

    stage: Stage[int] = Stage("test", threads=1, capacity=capacity, work=work, stop=stop)
    stage.start()
    return stage, done, gate


def _put_in_thread(stage: Stage[int], item: int) -> tuple[threading.Thread, dict[str, bool]]:
    answer: dict[str, bool] = {}
    t = threading.Thread(target=lambda: answer.setdefault("taken", stage.put(item)), daemon=True)
    t.start()
    return t, answer


def test_a_full_stage_makes_the_producer_wait_until_an_item_is_taken():
    stop = threading.Event()
    stage, done, gate = _gated_stage(stop)
    assert stage.put(1)  # the thread takes it and waits at the gate
    while stage.waiting():
        threading.Event().wait(0.01)
    assert stage.put(2) and stage.put(3)  # the stage is full now
    producer, answer = _put_in_thread(stage, 4)
    producer.join(timeout=0.2)
    assert producer.is_alive() and "taken" not in answer and stage.waiting() == 2
    gate.set()  # the work goes on: room is made, the producer's item goes in
    producer.join(timeout=JOIN_S)
    assert answer == {"taken": True}
    stage.close()
    stage.join()
    assert done == [1, 2, 3, 4]  # closing delivers what waits, in order


def test_a_stop_ends_the_stage_after_the_item_in_hand_and_leaves_the_rest():
    stop = threading.Event()
    stage, done, gate = _gated_stage(stop)
    for item in (1, 2, 3):
        assert stage.put(item)
    producer, answer = _put_in_thread(stage, 4)
    stop.set()
    producer.join(timeout=JOIN_S)
    assert answer == {"taken": False}  # a producer waiting for room is told no
    assert not stage.put(5)
    gate.set()
    stage.join()
    assert done == [1]
    assert stage.leftovers() == [2, 3] and stage.leftovers() == []


def test_the_signal_wakes_a_waiter_at_once_and_a_stale_count_does_not_wait():
    signal, stop = Signal(), threading.Event()
    seen = signal.count
    signal.fire()
    signal.wait(seen, timeout_s=JOIN_S, stop=stop)  # fired since `seen`: returns without waiting
    woke = threading.Event()
    waiter = threading.Thread(target=lambda: (signal.wait(signal.count, JOIN_S, stop), woke.set()), daemon=True)
    waiter.start()
    waiter.join(timeout=0.2)
    assert not woke.is_set()
    signal.fire()
    waiter.join(timeout=JOIN_S)
    assert woke.is_set()


def _until(ready) -> None:
    for _ in range(3000):
        if ready():
            return
        threading.Event().wait(0.01)
    raise AssertionError("never happened")


def test_the_look_ahead_readies_each_item_once_only_while_active_and_survives_a_failing_one():
    stop, active = threading.Event(), threading.Event()
    queue, readied, peeks = [1, 2, 3], [], []

    def peek() -> list[int]:
        peeks.append(active.is_set())
        return list(queue)

    def ready(item: int) -> None:
        if item == 2:
            raise OSError("unreadable")  # the claim meets it again and records it
        readied.append(item)

    ahead = Lookahead(peek, key=lambda i: i, ready=ready, active=active.is_set, stop=stop, every_s=JOIN_S)
    ahead.start()
    ahead.poke()
    active.set()
    ahead.poke()
    _until(lambda: readied == [1, 3])
    queue.append(4)
    ahead.poke()
    _until(lambda: readied == [1, 3, 4])
    ahead.close()
    assert readied == [1, 3, 4] and peeks and all(peeks)  # never looked while inactive


def _defer_in_thread(first: Precedence, stop: threading.Event) -> threading.Thread:
    t = threading.Thread(target=first.defer, args=(stop,), daemon=True)
    t.start()
    return t


def _urgent_in_thread(first: Precedence, done: threading.Event) -> threading.Thread:
    """A thread that begins urgent work (twice: it counts once) and ends it when `done` is set."""

    def work() -> None:
        first.begin()
        first.begin()
        done.wait(JOIN_S)
        first.end()

    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t


def test_deferred_work_waits_for_urgent_work_and_goes_when_it_ends():
    first, stop, done = Precedence(max_wait_s=JOIN_S), threading.Event(), threading.Event()
    first.end()  # without begin: nothing to end
    urgent = _urgent_in_thread(first, done)
    while not first.under_way():  # the urgent thread has begun
        threading.Event().wait(0.01)
    deferred = _defer_in_thread(first, stop)
    deferred.join(0.2)
    assert deferred.is_alive()  # held back while the urgent work is under way
    done.set()
    urgent.join(JOIN_S)
    deferred.join(JOIN_S)
    assert not deferred.is_alive() and first.under_way() == 0  # the double begin counted once


def test_deferred_work_is_never_starved_and_a_stop_releases_it():
    first, stop, done = Precedence(max_wait_s=0.05), threading.Event(), threading.Event()
    urgent = _urgent_in_thread(first, done)
    while not first.under_way():
        threading.Event().wait(0.01)
    _defer_in_thread(first, stop).join(JOIN_S)  # returns after max_wait_s though the urgent work goes on
    patient = Precedence(max_wait_s=JOIN_S)
    patient.begin()
    held = _defer_in_thread(patient, stop)
    stop.set()
    held.join(JOIN_S)
    assert not held.is_alive() and first.under_way() == 1
    done.set()
    urgent.join(JOIN_S)


def test_urgent_work_begun_after_a_defer_does_not_hold_it_back():
    first, stop = Precedence(max_wait_s=JOIN_S), threading.Event()
    done_first, done_later = threading.Event(), threading.Event()
    under_way = _urgent_in_thread(first, done_first)
    while not first.under_way():
        threading.Event().wait(0.01)
    deferred = _defer_in_thread(first, stop)
    deferred.join(0.2)
    later = _urgent_in_thread(first, done_later)  # begun while the defer waits
    while first.under_way() < 2:
        threading.Event().wait(0.01)
    assert deferred.is_alive()
    done_first.set()
    under_way.join(JOIN_S)
    deferred.join(JOIN_S)
    assert not deferred.is_alive() and first.under_way() == 1  # it went while the later work goes on
    done_later.set()
    later.join(JOIN_S)
