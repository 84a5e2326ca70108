"""The crawl example (``topologies/crawl.py``) at 1 and at 32 requests in flight per fetch replica, for ``bin/bench``.

Two fetch replicas and two analyze replicas in both; ``--set url=`` names the
site, ``--set db=`` the SQLite file. Apart from ``pipelines.py``, so that the
other benchmarks do not load aiohttp and the bundled site's server.
"""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("crawl_example", Path(__file__).resolve().parents[2] / "topologies"
                                               / "crawl.py")
assert _spec is not None and _spec.loader is not None
_crawl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_crawl)

crawl_c1 = _crawl.crawl_topology(fetchers=2, concurrency=1)
crawl_c32 = _crawl.crawl_topology(fetchers=2, concurrency=32)
