"""The DSL: declarations, handles, groupings and the errors of bad topologies."""

from __future__ import annotations

import functools
import re
import threading

import pytest

from flowgraph import FlowgraphError, Topology, TopologyError, broadcast, by_key, context, shuffle


def make_source(topo: Topology, name: str = "numbers"):
    @topo.source(name=name)
    def numbers():
        yield 1

    return numbers


def test_decorators_work_bare_with_keywords_and_called():
    topo = Topology("forms")

    @topo.source
    def numbers():
        yield 1

    @topo.node(inputs=numbers, parallelism=2, name="twice")
    def double(n):
        return n * 2

    class Store:
        def process(self, item):
            pass

    store = topo.sink(Store(), inputs=double, name="store")
    spec = topo.spec()
    assert [(n.name, n.kind.value, n.parallelism) for n in spec.nodes] == [
        ("numbers", "source", 1), ("twice", "node", 2), ("store", "sink", 1)]
    assert double.name == "twice" and store.name == "store"
    assert spec.node("twice").code is double.code


def test_inputs_accept_handle_name_list_and_dict():
    topo = Topology("inputs")
    a = make_source(topo, "a")
    b = make_source(topo, "b")
    topo.node(lambda x: x, inputs=a, name="one")
    topo.node(lambda x: x, inputs="a", name="two")
    topo.node(lambda x: x, inputs=[a, b], name="three")
    topo.node(lambda x: x, inputs={a: by_key("k"), b: broadcast()}, name="four")
    spec = topo.spec()
    assert [(i.upstream, str(i.grouping)) for i in spec.node("three").inputs] == [
        ("a", "shuffle"), ("b", "shuffle")]
    assert [(i.upstream, str(i.grouping)) for i in spec.node("four").inputs] == [
        ("a", "by_key('k')"), ("b", "broadcast")]
    assert str(shuffle()) == "shuffle"


def test_duplicate_name_is_rejected_naming_the_node():
    topo = Topology("crawl")
    make_source(topo, "fetch")
    with pytest.raises(TopologyError, match=re.escape(
            "node 'fetch' is declared twice in topology 'crawl'; give one of them another name=")):
        topo.node(lambda x: x, inputs="fetch", name="fetch")


def test_source_with_inputs_is_rejected():
    topo = Topology("t")
    numbers = make_source(topo)
    with pytest.raises(TopologyError, match=re.escape("source 'again' has inputs")):
        @topo.source(name="again", inputs=numbers)
        def again():
            yield 1


def test_node_without_inputs_is_rejected():
    topo = Topology("t")
    with pytest.raises(TopologyError, match=re.escape(
            "node 'lonely' has no inputs; give it inputs= or declare it with @topo.source")):
        @topo.node
        def lonely(x):
            return x


@pytest.mark.parametrize("parallelism", [0, -1, 1.5, True])
def test_parallelism_below_one_or_not_an_integer_is_rejected(parallelism):
    topo = Topology("t")
    numbers = make_source(topo)
    with pytest.raises(TopologyError, match=re.escape(
            f"node 'wide' has parallelism {parallelism!r}; it must be an integer >= 1")):
        topo.node(lambda x: x, inputs=numbers, name="wide", parallelism=parallelism)


def test_unknown_input_is_found_by_check_and_lists_declared_nodes():
    topo = Topology("crawl")
    make_source(topo, "fetch")
    topo.sink(lambda x: None, inputs="parse", name="store")
    with pytest.raises(TopologyError, match=re.escape(
            "sink 'store' lists input 'parse', which is not declared in topology 'crawl' "
            "(declared: fetch, store)")):
        topo.check()


def test_handle_of_another_topology_is_rejected():
    other = Topology("other")
    foreign = make_source(other, "foreign")
    topo = Topology("mine")
    with pytest.raises(TopologyError, match=re.escape(
            "node 'use' lists input 'foreign', which is declared in topology 'other', not in 'mine'")):
        topo.node(lambda x: x, inputs=foreign, name="use")


def test_cycle_is_found_by_check_and_shown():
    topo = Topology("loop")
    make_source(topo, "start")
    topo.node(lambda x: x, inputs=["start", "c"], name="a")
    topo.node(lambda x: x, inputs="a", name="b")
    topo.node(lambda x: x, inputs="b", name="c")
    with pytest.raises(TopologyError, match=re.escape("topology 'loop' has a cycle: a -> b -> c -> a")):
        topo.check()


def test_sink_as_input_is_rejected():
    topo = Topology("t")
    numbers = make_source(topo)
    store = topo.sink(lambda x: None, inputs=numbers, name="store")
    with pytest.raises(TopologyError, match=re.escape(
            "node 'after' lists sink 'store' as input; sinks have no outputs")):
        topo.node(lambda x: x, inputs=store, name="after")


def test_unpicklable_function_names_the_captured_global():
    topo = Topology("t")
    numbers = make_source(topo)
    lock = threading.Lock()

    def guarded(x):
        with lock:
            return x

    topo.node(guarded, inputs=numbers)
    with pytest.raises(TopologyError, match=re.escape(
            "node 'guarded' cannot be sent to a worker: function guarded captures variable 'lock' "
            "(a lock) cannot be pickled")):
        topo.check()


def test_bad_grouping_is_rejected():
    topo = Topology("t")
    numbers = make_source(topo)
    with pytest.raises(TopologyError, match=re.escape(
            "node 'x': input 'numbers' has grouping 'url'; expected shuffle(), by_key(...) or broadcast()")):
        topo.node(lambda v: v, inputs={numbers: "url"}, name="x")
    with pytest.raises(TopologyError, match="by_key\\(\\) takes a field name or index, or a function"):
        by_key(3.5)


def test_class_without_process_is_rejected():
    topo = Topology("t")
    numbers = make_source(topo)

    class Nothing:
        pass

    with pytest.raises(TopologyError, match=re.escape("node 'Nothing': class Nothing has no process() method")):
        topo.node(Nothing, inputs=numbers)


def test_a_sink_with_two_required_parameters_is_rejected_at_declaration():
    topo = Topology("t")
    numbers = make_source(topo)
    with pytest.raises(TopologyError, match=re.escape(
            "sink 'out': out(x, y) cannot be called with one item (it has 2 required parameters); "
            "a node's function takes the item as its only argument")):
        @topo.sink(inputs=numbers)
        def out(x, y):
            pass


def tick():
    return 1


def tag(item, *, label):
    return (label, item)


class NoItem:
    def process(self):
        pass


class FinishWithArgument:
    def process(self, item):
        pass

    def finish(self, counts):
        yield from counts


class Join:
    def process(self, left, right):
        return (left, right)


def lines(path):
    yield from open(path)


class GenerateWithArgument:
    def generate(self, count):
        yield from range(count)


@pytest.mark.parametrize("kind, code, expected", [
    ("node", tick, "node 'tick': tick() cannot be called with one item (it takes no parameters); "
                   "a node's function takes the item as its only argument"),
    ("node", tag, "node 'tag': tag(item, *, label) cannot be called with one item (it has required keyword-only "
                  "parameter label); a node's function takes the item as its only argument"),
    ("node", NoItem, "node 'NoItem': NoItem.process(self) cannot be called with one item (it takes no parameters "
                     "besides self); process() takes the item as its only argument"),
    ("node", FinishWithArgument, "node 'FinishWithArgument': FinishWithArgument.finish(self, counts) cannot be "
                                 "called without arguments (it has 1 required parameter besides self); setup(), "
                                 "finish() and teardown() take no arguments"),
    ("sink", Join(), "sink 'Join': Join.process(self, left, right) cannot be called with one item (it has 2 "
                     "required parameters besides self); process() takes the item as its only argument"),
    ("source", lines, "source 'lines': lines(path) cannot be called without arguments (it has 1 required "
                      "parameter); a source's function takes no arguments"),
    ("source", GenerateWithArgument, "source 'GenerateWithArgument': GenerateWithArgument.generate(self, count) "
                                     "cannot be called without arguments (it has 1 required parameter besides "
                                     "self); generate() takes no arguments"),
], ids=["function-without-item", "required-keyword-only", "process-without-item", "finish-with-argument",
        "object-taking-two-items", "source-function-with-argument", "generate-with-argument"])
def test_code_the_runtime_cannot_call_as_it_will_is_rejected_at_declaration(kind, code, expected):
    topo = Topology("t")
    inputs = {} if kind == "source" else {"inputs": make_source(topo)}
    with pytest.raises(TopologyError, match=re.escape(expected)):
        getattr(topo, kind)(code, **inputs)


def add(offset, item):
    return offset + item


def scale(item, factor=2):
    return item * factor


def first(*items):
    return items[0]


def with_offset(function):
    @functools.wraps(function)
    def wrapper(item):
        return function(1, item)

    return wrapper


class Static:
    @staticmethod
    def process(item):
        return item

    @classmethod
    def setup(cls):
        pass


@pytest.mark.parametrize("code", [functools.partial(add, 1), scale, first, with_offset(add), Static, Static(),
                                  str.upper])
def test_partials_defaults_star_args_wrappers_static_and_class_methods_are_accepted(code):
    topo = Topology("t")
    numbers = make_source(topo)
    assert topo.node(code, inputs=numbers, name="accepted").code is code


def test_code_whose_signature_cannot_be_read_is_taken_as_it_is():
    topo = Topology("t")
    numbers = make_source(topo)
    assert topo.sink(print, inputs=numbers).name == "print"


def test_empty_topology_is_rejected():
    with pytest.raises(TopologyError, match=re.escape("topology 'void' has no nodes")):
        Topology("void").check()


def test_context_outside_a_node_raises():
    with pytest.raises(FlowgraphError, match="only available inside a running node"):
        context()


def test_a_class_node_that_needs_arguments_to_be_made_is_rejected():
    topo = Topology("made")

    @topo.source
    def numbers():
        yield 1

    class Store:
        def __init__(self, path):
            self.path = path

        def process(self, item):
            pass

    expected = ("sink 'Store': Store(path) cannot be called without arguments (it has 1 required parameter); "
                "every replica makes its instance without arguments; give the class its settings as class "
                "attributes, or declare an instance: topo.sink(Store(...))")
    with pytest.raises(TopologyError, match=re.escape(expected)):
        topo.sink(inputs=numbers)(Store)
    topo.sink(Store("out.db"), inputs=numbers)
