"""Async separation jobs: the shared queue and its leases, the runner, chunked separation, intake of
uploads, progress events and A/B observations."""
