"""The launcher: ``run()``, the coordinator of the control plane, and the backends that start workers.

Backends (local processes, threads, ssh) only start workers from a plan and
tell when they end; everything else is the coordinator's.
"""
