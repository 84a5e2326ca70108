"""The Python DSL: ``Topology``, its decorators and the groupings.

Declaring a node records it in a frozen ``NodeSpec`` and returns a
``Handle`` for later ``inputs=``. Problems visible at declaration (a
duplicate name, a source with inputs, a node without inputs, a bad
parallelism, a malformed grouping) raise ``TopologyError`` right there;
problems of the whole graph (an input named by a string that is never
declared, a cycle, an unpicklable function) are found by ``Topology.check()``
and by every run before anything starts. So is code that cannot be called
as the runtime will call it: a node's function with two required
parameters, a ``process(self)`` without the item, a source that needs an
argument (checked with ``inspect.signature``; code whose signature cannot
be read, such as some builtins, is taken as it is).

No networkx and no ZeroMQ here: this module only describes.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

from ..errors import TopologyError
from ..settings import check_settings
from .policy import ErrorPolicy
from .shapes import Shape, checked_shape

if TYPE_CHECKING:
    from typing_extensions import TypedDict, Unpack

    from .hosts import Host
    from .plan import Plan  # plan.py imports this module

    class PolicyKeywords(TypedDict, total=False):
        """The error policy keywords of ``topo.node`` and ``topo.sink`` (see ``flowgraph.model.policy``)."""

        on_error: str
        retries: int
        retry_on: type[BaseException] | tuple[type[BaseException], ...]
        retry_backoff_s: float
        max_errors: int | None
        restarts: int | None
        concurrency: int
        ordered: bool


class GroupingKind(enum.Enum):
    """How the items of one edge are spread over the consumer's replicas."""

    SHUFFLE = "shuffle"
    BY_KEY = "by_key"
    BROADCAST = "broadcast"


@dataclass(frozen=True)
class Grouping:
    """The grouping of one edge; make it with ``shuffle()``, ``by_key()`` or ``broadcast()``."""

    kind: GroupingKind
    key: str | int | Callable[[Any], Any] | None = None
    """The field (``item[key]``) or function ``by_key`` routes on; ``None`` otherwise."""
    settings: tuple[tuple[str, Any], ...] = ()
    """This edge's own batching and serializer settings (see ``flowgraph.settings``)."""

    def __str__(self) -> str:
        if self.kind is not GroupingKind.BY_KEY:
            return str(self.kind.value)
        if isinstance(self.key, (str, int)):
            return f"by_key({self.key!r})"
        return f"by_key({getattr(self.key, '__qualname__', repr(self.key))})"


def shuffle(**settings: Any) -> Grouping:
    """Each item goes to one consumer replica, by demand (the default).

    With several consumer replicas, each grants its producers credit for
    about 20 ms of its measured work (``flowgraph.credit``) and gets no more,
    so a slower replica gets fewer items; each still gets its items in the
    order they were emitted.

    Keywords are this edge's own settings (``batch_items``, ``batch_bytes``,
    ``linger_ms``, ``hwm``, ``memory_budget_bytes``, ``serializer``; see
    ``flowgraph.settings.BufferSettings``), e.g. ``shuffle(batch_items=1)``
    to hand expensive items out one by one.

    >>> str(shuffle())
    'shuffle'
    """
    return Grouping(GroupingKind.SHUFFLE, settings=_settings("shuffle()", settings))


def by_key(key: str | int | Callable[[Any], Any], **settings: Any) -> Grouping:
    """Items with the same key go to the same consumer replica.

    ``key`` is a field (``item[key]``: a dict key, or an index of a tuple)
    or a function of the item. The
    replica is chosen from a stable hash of the key (never Python's salted
    ``hash``), so the mapping is the same in every process and on every host.
    Keys of type str, bytes, int, float, bool, None and tuples of these hash
    by value; other keys hash by their pickle. Keywords are the edge's own
    settings, as for ``shuffle``.

    >>> str(by_key("url"))
    "by_key('url')"
    """
    if isinstance(key, bool) or not (isinstance(key, (str, int)) or callable(key)):
        raise TopologyError(f"by_key() takes a field name or index, or a function of the item, not {key!r}")
    return Grouping(GroupingKind.BY_KEY, key, _settings("by_key()", settings))


def broadcast(**settings: Any) -> Grouping:
    """Every consumer replica gets every item; keywords are the edge's own settings, as for ``shuffle``.

    >>> str(broadcast())
    'broadcast'
    """
    return Grouping(GroupingKind.BROADCAST, settings=_settings("broadcast()", settings))


class Feedback:
    """An input that closes a loop: the output of a node declared later comes back (``feedback("name")``)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"feedback({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Feedback) and other.name == self.name

    def __hash__(self) -> int:
        return hash((Feedback, self.name))


def feedback(name: str) -> Feedback:
    """The output of node ``name``, declared later, as an input of this node: a loop (DESIGN §8).

    Used in ``inputs=`` as a dict key with its grouping (``shuffle()`` or
    ``by_key()``; a broadcast cannot close a loop) or as a list element
    (``shuffle()``). A cycle must pass through a feedback edge; such an edge
    never blocks its producer (beyond its memory budget it overflows to
    disk), and the run ends once every source ended and nothing is in
    flight in the loop (``flowgraph.runtime.loops``).

    >>> feedback("links")
    feedback('links')
    """
    if not isinstance(name, str) or not name:
        raise TopologyError(f"feedback() takes the name of a node declared later, not {name!r}")
    return Feedback(name)


def _settings(what: str, settings: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    problems = check_settings(settings)
    if problems:
        raise TopologyError(f"{what}: {'; '.join(problems)}")
    return tuple(sorted(settings.items()))


class NodeKind(enum.Enum):
    """The three roles a node can have."""

    SOURCE = "source"
    NODE = "node"
    SINK = "sink"


ITEMS = "items"
ERRORS = "errors"
"""The two streams a node has: the items it emits, and (``handle.errors``) the items it dead-lettered."""


@dataclass(frozen=True)
class InputSpec:
    """One input edge of a node: the upstream node's name, which of its streams, and the grouping."""

    upstream: str
    grouping: Grouping
    stream: str = ITEMS
    """``items``, or ``errors`` for the upstream's dead letters (``fetch.errors``)."""
    feedback: bool = False
    """A loop's way back (``feedback("name")``): the upstream is declared later and fed by this node."""


@dataclass(frozen=True)
class NodeSpec:
    """A declared node, exactly as the user wrote it."""

    name: str
    kind: NodeKind
    code: Any
    """The user's function, class or object."""
    shape: Shape
    parallelism: int
    inputs: tuple[InputSpec, ...]
    hosts: tuple[str, ...]
    """Hosts this node is pinned to (``hosts=``); empty when unpinned."""
    policy: ErrorPolicy = field(default_factory=ErrorPolicy)
    """What it does when its code raises, and its restart budget (``on_error=``, ``restarts=``, ...)."""
    concurrency: int = 1
    """Items of one replica in flight at once (``concurrency=``): on its event loop (``async def process``),
    else on that many threads."""
    ordered: bool = True
    """With concurrency: outputs leave in input order (``ordered=False``: as each item completes)."""

    @property
    def restartable(self) -> bool:
        """Whether a replica may be restarted without a checkpoint: it keeps no state a restart would lose.

        Functions keep none; sources run their generator again; a class (or
        an object) only if it declares ``restartable = True`` (its ``setup()``
        rebuilds all it needs).
        """
        if self.kind is NodeKind.SOURCE or self.shape in (Shape.FUNCTION, Shape.GENERATOR):
            return True
        return getattr(self.code, "restartable", False) is True


@dataclass(frozen=True)
class TopologySpec:
    """A whole topology as plain data, nodes in declaration order."""

    name: str
    nodes: tuple[NodeSpec, ...]
    settings: tuple[tuple[str, Any], ...] = ()
    """The topology's batching and serializer settings (see ``flowgraph.settings``)."""

    def node(self, name: str) -> NodeSpec:
        """The node called ``name``; ``KeyError`` if there is none."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)


class Handle:
    """What a decorator returns: refers to a declared node, for ``inputs=`` of later nodes.

    ``handle.code`` is the decorated function, class or object, for calling
    it directly in a unit test; ``handle.errors`` is its error stream.
    """

    __slots__ = ("topology", "name", "kind", "code")

    def __init__(self, topology: Topology, name: str, kind: NodeKind, code: Any) -> None:
        self.topology = topology
        self.name = name
        self.kind = kind
        self.code = code

    @property
    def errors(self) -> ErrorStream:
        """The items this node dead-letters (``on_error="dead_letter"``), as ``flowgraph.DeadLetter`` records.

        An input like any handle: ``topo.sink(store, inputs=fetch.errors)``.
        """
        return ErrorStream(self)

    def __repr__(self) -> str:
        return f"<{self.kind.value} {self.name!r} of topology {self.topology.name!r}>"


class ErrorStream:
    """The error stream of a node (``handle.errors``): its dead letters, for ``inputs=`` of later nodes."""

    __slots__ = ("handle",)

    def __init__(self, handle: Handle) -> None:
        self.handle = handle

    def __repr__(self) -> str:
        return f"<errors of {self.handle!r}>"


Upstream = Handle | ErrorStream | Feedback | str | type
"""An input of a node: its handle or its name, as a type checker sees it.

``type`` is there for mypy, which ignores what a class decorator returns
(python/mypy#3135): to mypy, ``Count`` in ``@topo.node(...) class Count`` is
still the class, while at run time it is the ``Handle``. A class that was
never declared is rejected at run time, with ``TopologyError``.
"""

InputsArg = Upstream | Sequence[Upstream] | Mapping[Any, Grouping] | None
"""What ``inputs=`` takes: an upstream, a list of them, or a dict ``{upstream: grouping}``.

A list is a ``Sequence``, not any ``Iterable``, so that a type checker does
not take a dict with wrong values for an iterable of its keys. The keys of a
dict are checked at declaration only: ``Mapping`` is invariant in its keys,
so a ``Mapping[Upstream, Grouping]`` would refuse a ``dict[Handle, Grouping]``
built beforehand, and a union of mappings leaves a literal mixing handles and
names without a type.
"""


class Topology:
    """A dataflow graph of sources, nodes and sinks.

    >>> topo = Topology("double")
    >>> @topo.source
    ... def numbers():
    ...     yield from range(3)
    >>> @topo.sink(inputs=numbers)
    ... def show(n):
    ...     print(n * 2)
    >>> [node.name for node in topo.spec().nodes]
    ['numbers', 'show']
    """

    def __init__(self, name: str, **settings: Any) -> None:
        """``settings`` apply to every edge (``batch_items``, ``batch_bytes``, ``linger_ms``, ``hwm``,
        ``memory_budget_bytes``, ``serializer``; see ``flowgraph.settings``); an edge may override them."""
        if not isinstance(name, str) or not name.strip():
            raise TopologyError(f"a topology needs a non-empty name, not {name!r}")
        self.name = name
        self._settings = _settings(f"topology {name!r}", settings)
        self._nodes: list[NodeSpec] = []

    def __repr__(self) -> str:
        return f"Topology({self.name!r}, nodes={[n.name for n in self._nodes]})"

    @overload
    def source(self, code: None = None, /, *, name: str | None = None, parallelism: int = 1,
               hosts: Iterable[str] | None = None, inputs: None = None,
               restarts: int | None = None) -> Callable[[object], Handle]: ...

    @overload
    def source(self, code: object, /, *, name: str | None = None, parallelism: int = 1,
               hosts: Iterable[str] | None = None, inputs: None = None, restarts: int | None = None) -> Handle: ...

    def source(self, code: object = None, /, *, name: str | None = None, parallelism: int = 1,
               hosts: Iterable[str] | None = None, inputs: InputsArg = None,
               restarts: int | None = None) -> Handle | Callable[[object], Handle]:
        """Declare a source: a generator function, or a class with ``generate()``.

        Usable bare (``@topo.source``), with keywords
        (``@topo.source(parallelism=2)``) or called (``topo.source(obj, name=...)``);
        returns the ``Handle``, or with keywords only the decorator that
        returns it. Each of ``parallelism`` replicas runs it;
        ``context().replica`` lets a replica take its share. ``restarts=``
        overrides the run's restart budget for its replicas. Raises
        ``TopologyError`` when given ``inputs=`` or code that cannot be
        called without arguments.
        """
        return self._declare(NodeKind.SOURCE, code, name, parallelism, hosts, inputs, {"restarts": restarts})

    @overload
    def node(self, code: None = None, /, *, inputs: InputsArg = None, name: str | None = None,
             parallelism: int = 1, hosts: Iterable[str] | None = None,
             **policy: Unpack[PolicyKeywords]) -> Callable[[object], Handle]: ...

    @overload
    def node(self, code: object, /, *, inputs: InputsArg = None, name: str | None = None, parallelism: int = 1,
             hosts: Iterable[str] | None = None, **policy: Unpack[PolicyKeywords]) -> Handle: ...

    def node(self, code: object = None, /, *, inputs: InputsArg = None, name: str | None = None,
             parallelism: int = 1, hosts: Iterable[str] | None = None,
             **policy: Unpack[PolicyKeywords]) -> Handle | Callable[[object], Handle]:
        """Declare a node: a function (return value or generator) or a class with ``process()``.

        ``inputs=`` is a handle, a node name, a list of them, or a dict
        ``{handle: grouping}``; the default grouping is ``shuffle()``. A
        handle's ``.errors`` is the error stream of a node that dead-letters.
        ``feedback("name")`` in ``inputs=`` closes a loop through a node
        declared later. The error policy (``on_error=``, ``retries=``,
        ``retry_on=``, ``retry_backoff_s=``, ``max_errors=``, ``restarts=``)
        is described in ``flowgraph.model.policy``. ``concurrency=N`` lets
        each replica have N items in flight: an ``async def process`` runs
        them on the replica's event loop, a blocking one on N threads;
        outputs keep input order unless ``ordered=False``. Returns the ``Handle``, or with keywords
        only the decorator that returns it. Raises ``TopologyError`` when the
        function (or ``process``) cannot be called with one item, or the
        policy is malformed.
        """
        return self._declare(NodeKind.NODE, code, name, parallelism, hosts, inputs, policy)

    @overload
    def sink(self, code: None = None, /, *, inputs: InputsArg = None, name: str | None = None,
             parallelism: int = 1, hosts: Iterable[str] | None = None,
             **policy: Unpack[PolicyKeywords]) -> Callable[[object], Handle]: ...

    @overload
    def sink(self, code: object, /, *, inputs: InputsArg = None, name: str | None = None, parallelism: int = 1,
             hosts: Iterable[str] | None = None, **policy: Unpack[PolicyKeywords]) -> Handle: ...

    def sink(self, code: object = None, /, *, inputs: InputsArg = None, name: str | None = None,
             parallelism: int = 1, hosts: Iterable[str] | None = None,
             **policy: Unpack[PolicyKeywords]) -> Handle | Callable[[object], Handle]:
        """Declare a sink: like ``node`` (``concurrency=`` too), but what it returns or yields is dropped."""
        return self._declare(NodeKind.SINK, code, name, parallelism, hosts, inputs, policy)

    def spec(self) -> TopologySpec:
        """The topology as declared so far, as frozen data (not validated as a graph)."""
        return TopologySpec(self.name, tuple(self._nodes), self._settings)

    def check(self, hosts: str | Iterable[str] | Iterable[Host] | None = None, restarts: int = 0) -> Plan:
        """Validate the whole topology and return its ``Plan``, starting nothing.

        ``hosts`` (``"h1,h2"``, ``"@FILE"`` or a list) places the replicas
        as ``run`` would, without contacting any host; ``restarts`` plans as
        ``run(restarts=...)`` would. Raises ``TopologyError`` naming the node
        and the problem.
        """
        from .plan import plan_run

        return plan_run(self.spec(), hosts=hosts, restarts=restarts)

    def _declare(
        self,
        kind: NodeKind,
        code: object,
        name: str | None,
        parallelism: int,
        hosts: Iterable[str] | None,
        inputs: InputsArg,
        policy: Mapping[str, Any],
    ) -> Handle | Callable[[object], Handle]:
        def declare(code: object) -> Handle:
            return self._add(kind, code, name, parallelism, hosts, inputs, policy)

        if code is None:
            return declare
        return declare(code)

    def _add(
        self,
        kind: NodeKind,
        code: Any,
        name: str | None,
        parallelism: int,
        hosts: Iterable[str] | None,
        inputs: InputsArg,
        policy: Mapping[str, Any],
    ) -> Handle:
        node_name = name if name is not None else _default_name(code)
        what = f"{kind.value} {node_name!r}"
        if not isinstance(node_name, str) or not node_name or "/" in node_name:
            raise TopologyError(f"{kind.value} name {node_name!r} must be a non-empty string without '/'")
        if any(node.name == node_name for node in self._nodes):
            raise TopologyError(
                f"{what} is declared twice in topology {self.name!r}; "
                "give one of them another name= "
            )
        if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 1:
            raise TopologyError(f"{what} has parallelism {parallelism!r}; it must be an integer >= 1")
        if kind is NodeKind.SOURCE:
            if inputs is not None:
                raise TopologyError(
                    f"{what} has inputs; a source generates its items "
                    "(declare it with @topo.node to give it inputs)"
                )
            input_specs: tuple[InputSpec, ...] = ()
        else:
            input_specs = self._input_specs(what, inputs)
        keywords = dict(policy)
        concurrency = keywords.pop("concurrency", 1)
        ordered = keywords.pop("ordered", True)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise TopologyError(f"{what} has concurrency {concurrency!r}; it must be an integer >= 1")
        if not isinstance(ordered, bool):
            raise TopologyError(f"{what}: ordered={ordered!r}; it must be True or False")
        self._nodes.append(
            NodeSpec(
                name=node_name,
                kind=kind,
                code=code,
                shape=checked_shape(what, kind.value, code),
                parallelism=parallelism,
                inputs=input_specs,
                hosts=_host_tuple(what, hosts),
                policy=_policy(what, keywords),
                concurrency=concurrency,
                ordered=ordered,
            )
        )
        return Handle(self, node_name, kind, code)

    def _input_specs(self, what: str, inputs: InputsArg) -> tuple[InputSpec, ...]:
        if inputs is None or (isinstance(inputs, (list, tuple, dict)) and not inputs):
            raise TopologyError(
                f"{what} has no inputs; give it inputs= or declare it with @topo.source"
            )
        if isinstance(inputs, Mapping):
            pairs = list(inputs.items())
        elif isinstance(inputs, (Handle, ErrorStream, Feedback, str)):
            pairs = [(inputs, shuffle())]
        elif isinstance(inputs, Iterable):
            pairs = [(upstream, shuffle()) for upstream in inputs]
        else:
            raise TopologyError(f"{what}: inputs= takes a handle, a name, a list or a dict, not {inputs!r}")
        specs: list[InputSpec] = []
        for upstream, grouping in pairs:
            if isinstance(upstream, Feedback):
                specs.append(self._feedback_spec(what, upstream, grouping, specs))
                continue
            stream = ERRORS if isinstance(upstream, ErrorStream) else ITEMS
            handle = upstream.handle if isinstance(upstream, ErrorStream) else upstream
            upstream_name = self._upstream_name(what, handle)
            label = upstream_name if stream == ITEMS else f"{upstream_name}.errors"
            if not isinstance(grouping, Grouping):
                raise TopologyError(
                    f"{what}: input {label!r} has grouping {grouping!r}; "
                    "expected shuffle(), by_key(...) or broadcast()"
                )
            if any((spec.upstream, spec.stream) == (upstream_name, stream) for spec in specs):
                raise TopologyError(f"{what} lists input {label!r} twice")
            specs.append(InputSpec(upstream_name, grouping, stream))
        return tuple(specs)

    def _feedback_spec(self, what: str, upstream: Feedback, grouping: Any, specs: list[InputSpec]) -> InputSpec:
        label = repr(upstream)
        if not isinstance(grouping, Grouping) or grouping.kind is GroupingKind.BROADCAST:
            raise TopologyError(f"{what}: input {label} has grouping {grouping!r}; a feedback edge takes "
                                "shuffle() or by_key(...) (a broadcast cannot close a loop)")
        if any(spec.upstream == upstream.name for spec in specs):
            raise TopologyError(f"{what} lists input {upstream.name!r} twice")
        return InputSpec(upstream.name, grouping, ITEMS, feedback=True)

    def _upstream_name(self, what: str, upstream: Any) -> str:
        if isinstance(upstream, str):
            return upstream
        if isinstance(upstream, Handle):
            if upstream.topology is not self:
                raise TopologyError(
                    f"{what} lists input {upstream.name!r}, which is declared in topology "
                    f"{upstream.topology.name!r}, not in {self.name!r}"
                )
            if upstream.kind is NodeKind.SINK:
                raise TopologyError(f"{what} lists sink {upstream.name!r} as input; sinks have no outputs")
            return upstream.name
        raise TopologyError(
            f"{what} lists input {upstream!r}; an input is a handle returned by "
            "@topo.source/@topo.node or a node name"
        )


def _default_name(code: Any) -> str:
    if code is None:
        return ""
    if inspect.isfunction(code) or inspect.isclass(code):
        return code.__name__
    return getattr(code, "__name__", type(code).__name__)


def _host_tuple(what: str, hosts: Iterable[str] | None) -> tuple[str, ...]:
    if hosts is None:
        return ()
    if isinstance(hosts, str):
        hosts = [hosts]
    result = tuple(hosts)
    if not result or not all(isinstance(host, str) and host for host in result):
        raise TopologyError(f"{what}: hosts= takes a non-empty list of host names, not {hosts!r}")
    return result


def _policy(what: str, keywords: Mapping[str, Any]) -> ErrorPolicy:
    """The ``ErrorPolicy`` of a declaration's keywords; a keyword that is no policy's is a ``TopologyError``."""
    unknown = sorted(set(keywords) - set(inspect.signature(ErrorPolicy.declared).parameters) - {"what"})
    if unknown:
        raise TopologyError(f"{what}: unexpected keyword {', '.join(map(repr, unknown))}; the keywords are "
                            "inputs, name, parallelism, hosts, concurrency, ordered and the policy keywords on_error, "
                            "retries, retry_on, retry_backoff_s, max_errors and restarts")
    return ErrorPolicy.declared(what, **keywords)
