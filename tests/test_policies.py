"""Per-item error policies: skip, dead letters, retries with backoff, max_errors, and what the report counts."""

from __future__ import annotations

import json
import random
import re

import pytest

from flowgraph import DeadLetter, RunFailed, Topology, TopologyError, context, run
from flowgraph.model.plan import describe_plan
from flowgraph.model.policy import BACKOFF_CAP_S, backoff_s
from flowgraph.testing import assert_same_items, run_and_collect
from helpers import run_cli, write_topology

COUNT = 3000


def bad(n: int) -> bool:
    return n % 7 == 3


def numbers_into(topo: Topology, parallelism: int = 1):
    @topo.source(parallelism=parallelism)
    def numbers():
        me = context()
        yield from range(me.replica, COUNT, me.parallelism)

    return numbers


def test_skip_drops_each_bad_item_alone_and_counts_it(mode):
    topo = Topology("skip")
    numbers = numbers_into(topo, parallelism=2)

    @topo.node(inputs=numbers, parallelism=3, on_error="skip")
    def parse(n):
        if bad(n):
            raise ValueError(f"bad number {n}")
        return n

    topo.sink(lambda n: None, inputs=parse, name="store")
    result = run_and_collect(topo, mode=mode)
    expected = [n for n in range(COUNT) if not bad(n)]
    assert_same_items(result["store"], expected)
    report = result.report["parse"]
    assert (report.items_in, report.errors, report.skipped, report.dead_lettered) == (COUNT, COUNT - len(expected),
                                                                                      COUNT - len(expected), 0)
    assert report.items_out + report.skipped == report.items_in


def test_dead_letters_carry_the_item_where_it_failed_and_why(mode):
    topo = Topology("dead-letters")
    numbers = numbers_into(topo)

    @topo.node(inputs=numbers, parallelism=2, on_error="dead_letter")
    def parse(n):
        if bad(n):
            raise ValueError(f"bad number {n}")
        return n

    topo.sink(lambda n: None, inputs=parse, name="store")
    topo.sink(lambda letter: None, inputs=parse.errors, name="errors")
    result = run_and_collect(topo, mode=mode)
    letters = result["errors"]
    assert sorted(letter.item for letter in letters) == [n for n in range(COUNT) if bad(n)]
    assert len(result["store"]) + len(letters) == COUNT
    letter = letters[0]
    assert isinstance(letter, DeadLetter)
    assert (letter.node, letter.host, letter.error_type, letter.attempts) == ("parse", "localhost", "ValueError", 1)
    assert letter.replica in (0, 1) and letter.error == f"bad number {letter.item}"
    assert "test_policies.py" in letter.traceback and 'raise ValueError(f"bad number {n}")' in letter.traceback
    assert result.report["parse"].dead_lettered == len(letters)


def test_a_transient_fault_clears_on_a_retry_and_the_item_is_processed_once(mode):
    topo = Topology("transient")
    numbers = numbers_into(topo)

    @topo.node(inputs=numbers, retries=2, retry_backoff_s=0.001)
    class Flaky:
        def setup(self):
            self.tried = set()

        def process(self, n):
            if bad(n) and n not in self.tried:
                self.tried.add(n)
                raise ConnectionError(f"try {n} again")
            yield n
            yield -n

    topo.sink(lambda n: None, inputs=Flaky, name="store")
    result = run_and_collect(topo, mode=mode)
    assert_same_items(result["store"], [m for n in range(COUNT) for m in (n, -n)])
    report = result.report["Flaky"]
    faults = sum(1 for n in range(COUNT) if bad(n))
    assert (report.errors, report.retries, report.skipped, report.dead_lettered) == (faults, faults, 0, 0)


def test_only_the_named_exceptions_are_retried():
    topo = Topology("retry-on")
    numbers = numbers_into(topo)

    @topo.node(inputs=numbers, retries=3, retry_on=ConnectionError, retry_backoff_s=0.001, on_error="skip")
    def parse(n):
        if bad(n):
            raise ValueError("not worth a retry")
        return n

    topo.sink(lambda n: None, inputs=parse, name="store")
    report = run_and_collect(topo, mode="inproc").report["parse"]
    faults = sum(1 for n in range(COUNT) if bad(n))
    assert (report.errors, report.retries, report.skipped) == (faults, 0, faults)


def test_a_retried_item_that_keeps_failing_is_given_up_after_its_attempts(mode):
    topo = Topology("hopeless")
    numbers = numbers_into(topo)

    @topo.node(inputs=numbers, retries=2, retry_backoff_s=0.001, on_error="dead_letter")
    def parse(n):
        if n == 10:
            raise TimeoutError("never answers")
        return n

    topo.sink(lambda n: None, inputs=parse, name="store")
    topo.sink(lambda letter: None, inputs=parse.errors, name="errors")
    result = run_and_collect(topo, mode=mode)
    [letter] = result["errors"]
    assert (letter.item, letter.attempts, letter.error_type) == (10, 3, "TimeoutError")
    assert (result.report["parse"].errors, result.report["parse"].retries) == (3, 2)


def test_a_generator_that_raises_half_way_through_an_item_sends_none_of_that_items_outputs(mode):
    topo = Topology("half-way")
    numbers = numbers_into(topo)

    @topo.node(inputs=numbers, on_error="skip")
    def words(n):
        yield f"{n}a"
        if bad(n):
            raise ValueError("half way")
        yield f"{n}b"

    topo.sink(lambda word: None, inputs=words, name="store")
    result = run_and_collect(topo, mode=mode)
    assert_same_items(result["store"], [f"{n}{part}" for n in range(COUNT) if not bad(n) for part in "ab"])


def test_a_sink_can_skip_the_items_it_cannot_store(mode):
    topo = Topology("sink-skips")
    numbers = numbers_into(topo)

    @topo.sink(inputs=numbers, on_error="skip")
    def store(n):
        if bad(n):
            raise OSError("disk says no")

    report = run_and_collect(topo, mode=mode).report["store"]
    assert report.items_in == COUNT and report.skipped == sum(1 for n in range(COUNT) if bad(n))


def test_past_max_errors_the_run_fails_naming_the_limit(mode):
    topo = Topology("too-many")
    numbers = numbers_into(topo)

    @topo.node(inputs=numbers, on_error="skip", max_errors=3)
    def parse(n):
        if bad(n):
            raise ValueError(f"bad number {n}")
        return n

    topo.sink(lambda n: None, inputs=parse, name="store")
    with pytest.raises(RunFailed) as caught:
        run(topo, inproc=mode == "inproc")
    assert ("node 'parse' replica 0 on localhost failed in process(): gave up on more than max_errors=3 items "
            "(4 skipped, 0 dead-lettered); the last one raised: ValueError: bad number 24") in str(caught.value)
    assert caught.value.item == "24"


def test_a_failing_dead_letter_sink_fails_the_run(mode):
    topo = Topology("errors-fail")
    numbers = numbers_into(topo)

    @topo.node(inputs=numbers, on_error="dead_letter")
    def parse(n):
        if bad(n):
            raise ValueError(f"bad number {n}")
        return n

    topo.sink(lambda n: None, inputs=parse, name="store")

    @topo.sink(inputs=parse.errors)
    def errors(letter):
        raise RuntimeError("the error store is broken too")

    with pytest.raises(RunFailed, match="the error store is broken too") as caught:
        run(topo, inproc=mode == "inproc")
    assert caught.value.node == "errors"


def test_a_node_may_take_both_the_items_and_the_dead_letters_of_its_upstream(mode):
    topo = Topology("both")
    numbers = numbers_into(topo)

    @topo.node(inputs=numbers, parallelism=2, on_error="dead_letter")
    def parse(n):
        if bad(n):
            raise ValueError("bad")
        return n

    @topo.sink(inputs=[parse, parse.errors], parallelism=2)
    def store(item):
        return None

    result = run_and_collect(topo, mode=mode)
    good = [item for item in result["store"] if not isinstance(item, DeadLetter)]
    letters = [item.item for item in result["store"] if isinstance(item, DeadLetter)]
    assert_same_items(good, [n for n in range(COUNT) if not bad(n)])
    assert_same_items(letters, [n for n in range(COUNT) if bad(n)])


def test_dead_lettering_without_a_taker_of_its_errors_is_a_topology_error():
    topo = Topology("untaken")
    numbers = numbers_into(topo)
    topo.node(lambda n: n, inputs=numbers, name="parse", on_error="dead_letter")
    topo.sink(lambda n: None, inputs="parse", name="store")
    with pytest.raises(TopologyError, match=re.escape(
            "node 'parse' dead-letters (on_error=\"dead_letter\") but no node takes parse.errors as input; give its "
            "error stream a sink, e.g. topo.sink(store, inputs=parse.errors)")):
        topo.check()


def test_taking_the_errors_of_a_node_that_does_not_dead_letter_is_a_topology_error():
    topo = Topology("no-letters")
    numbers = numbers_into(topo)
    parse = topo.node(lambda n: n, inputs=numbers, name="parse", on_error="skip")
    topo.sink(lambda n: None, inputs=parse.errors, name="errors")
    with pytest.raises(TopologyError, match=re.escape(
            "sink 'errors' takes parse.errors as input, but node 'parse' does not dead-letter; declare it with "
            "on_error=\"dead_letter\"")):
        topo.check()


@pytest.mark.parametrize("keywords, expected", [
    ({"on_error": "ignore"}, "node 'parse': on_error='ignore'; expected one of 'fail', 'skip', 'dead_letter'"),
    ({"retries": -1}, "node 'parse': retries=-1; it must be an integer >= 0"),
    ({"retry_on": "ValueError"}, "node 'parse': retry_on='ValueError'; expected an exception class or a tuple of them"),
    ({"retry_backoff_s": -0.5}, "node 'parse': retry_backoff_s=-0.5; it must be a number >= 0"),
    ({"max_errors": 1.5}, "node 'parse': max_errors=1.5; it must be an integer >= 0"),
    ({"restart": 2}, "node 'parse': unexpected keyword 'restart'; the keywords are inputs, name, parallelism, "
                     "hosts, concurrency, ordered and the policy keywords on_error, retries, retry_on, "
                     "retry_backoff_s, max_errors and restarts"),
])
def test_a_malformed_policy_is_rejected_at_declaration(keywords, expected):
    topo = Topology("bad-policy")
    numbers = numbers_into(topo)
    with pytest.raises(TopologyError, match=re.escape(expected)):
        topo.node(lambda n: n, inputs=numbers, name="parse", **keywords)


def test_check_shows_each_nodes_error_policy():
    topo = Topology("shown")
    numbers = numbers_into(topo)
    parse = topo.node(lambda n: n, inputs=numbers, name="parse", on_error="dead_letter", retries=2,
                      retry_on=(ConnectionError, TimeoutError), max_errors=100)
    topo.sink(lambda n: None, inputs=parse, name="store")
    topo.sink(lambda n: None, inputs=parse.errors, name="errors", restarts=5)
    text = describe_plan(topo.check())
    assert ("on_error=dead_letter retries=2 (on ConnectionError,TimeoutError, backoff 0.1 s) max_errors=100"
            in text)
    assert "restarts=5" in text
    assert re.search(r"parse\.errors->errors\s+shuffle", text)


def test_the_backoff_doubles_from_its_base_up_to_the_cap_with_jitter():
    rng = random.Random(7)
    for attempt in range(1, 30):
        delay = min(BACKOFF_CAP_S, 0.1 * 2 ** (attempt - 1))
        assert delay / 2 <= backoff_s(attempt, 0.1, rng) <= delay


def test_the_summary_and_the_metrics_show_errors_retries_skipped_and_dead_letters(tmp_path):
    path = write_topology(tmp_path, """
        from flowgraph import Topology

        topo = Topology("counted")

        @topo.source
        def numbers():
            yield from range(100)

        @topo.node(inputs=numbers, on_error="skip", retries=1, retry_backoff_s=0.001)
        def parse(n):
            if n % 10 == 0:
                raise ValueError("bad")
            return n

        topo.sink(lambda n: None, inputs=parse, name="store")
    """)
    metrics = tmp_path / "run.json"
    code, _, stderr = run_cli("run", str(path), "--metrics-json", str(metrics))
    assert code == 0, stderr
    header = next(line for line in stderr.splitlines() if line.startswith("node "))
    assert header.split()[-4:] == ["errors", "retries", "skipped", "dead"]
    parse_row = next(line for line in stderr.splitlines() if line.startswith("parse "))
    assert parse_row.split()[-4:] == ["20", "10", "10", "0"]
    node = json.loads(metrics.read_text())["nodes"]["parse"]
    assert (node["errors"], node["retries"], node["skipped"], node["dead_lettered"]) == (20, 10, 10, 0)
