"""flowgraph: dataflow topologies in plain Python, every replica a process, wired by ZeroMQ.

>>> from flowgraph import Topology, by_key, broadcast, context, run
"""

import logging as _logging

from ._version import __version__ as __version__
from .errors import AllocationEnded as AllocationEnded
from .errors import CheckpointError as CheckpointError
from .errors import FlowgraphError as FlowgraphError
from .errors import HostError as HostError
from .errors import Phase as Phase
from .errors import RunFailed as RunFailed
from .errors import RunInterrupted as RunInterrupted
from .errors import TopologyError as TopologyError
from .launch.runner import run as run
from .model.dsl import ErrorStream as ErrorStream
from .model.dsl import Grouping as Grouping
from .model.dsl import Handle as Handle
from .model.dsl import Topology as Topology
from .model.dsl import broadcast as broadcast
from .model.dsl import by_key as by_key
from .model.dsl import feedback as feedback
from .model.dsl import shuffle as shuffle
from .model.plan import Plan as Plan
from .model.policy import DeadLetter as DeadLetter
from .model.report import NodeReport as NodeReport
from .model.report import ReplicaReport as ReplicaReport
from .model.report import RunReport as RunReport
from .runtime.context import Context as Context
from .runtime.context import context as context
from .settings import BufferSettings as BufferSettings
from .settings import Timeouts as Timeouts

__all__ = [
    "AllocationEnded",
    "BufferSettings",
    "CheckpointError",
    "Context",
    "DeadLetter",
    "ErrorStream",
    "FlowgraphError",
    "Grouping",
    "Handle",
    "HostError",
    "NodeReport",
    "Phase",
    "Plan",
    "ReplicaReport",
    "RunFailed",
    "RunInterrupted",
    "RunReport",
    "Timeouts",
    "Topology",
    "TopologyError",
    "broadcast",
    "by_key",
    "context",
    "feedback",
    "run",
    "shuffle",
]

_logging.getLogger(__name__).addHandler(_logging.NullHandler())
