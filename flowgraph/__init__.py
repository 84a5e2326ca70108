"""flowgraph: dataflow topologies in plain Python, every replica a process, wired by ZeroMQ.

>>> from flowgraph import Topology, by_key, broadcast, context, run
"""

import logging as _logging

from .context import Context as Context
from .context import context as context
from .dsl import Grouping as Grouping
from .dsl import Handle as Handle
from .dsl import Topology as Topology
from .dsl import broadcast as broadcast
from .dsl import by_key as by_key
from .dsl import shuffle as shuffle
from .errors import FlowgraphError as FlowgraphError
from .errors import HostError as HostError
from .errors import RunFailed as RunFailed
from .errors import RunInterrupted as RunInterrupted
from .errors import TopologyError as TopologyError
from .plan import Plan as Plan
from .report import NodeReport as NodeReport
from .report import ReplicaReport as ReplicaReport
from .report import RunReport as RunReport
from .runner import run as run
from .settings import BufferSettings as BufferSettings
from ._version import __version__ as __version__


__all__ = [
    "BufferSettings",
    "Context",
    "FlowgraphError",
    "Grouping",
    "Handle",
    "HostError",
    "NodeReport",
    "Plan",
    "ReplicaReport",
    "RunFailed",
    "RunInterrupted",
    "RunReport",
    "Topology",
    "TopologyError",
    "broadcast",
    "by_key",
    "context",
    "run",
    "shuffle",
]

_logging.getLogger(__name__).addHandler(_logging.NullHandler())
