"""One replica, the same in a worker process and in a thread of an ``--inproc`` run.

``replica`` runs the phases; ``inputs`` and ``outputs`` (with ``edges``,
``demand`` and ``source``) own its data sockets; ``agent`` is its side of the
control plane; ``bootstrap`` is the entry of a worker process.
"""
