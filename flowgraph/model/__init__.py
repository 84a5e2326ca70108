"""What a run is, as plain data: the DSL, validation, the plan, hosts, pictures and reports.

Nothing here imports ZeroMQ or starts anything; only ``graph`` (validation)
imports networkx, and only the launcher calls it.
"""
