"""Engines that run the batch core elsewhere than in this process (:mod:`camcli.distributed.ray`).

A distributed run is the same program as a local one: the same discovery, the same per-batch
functions (:mod:`camcli.pipeline`), the same outputs and exit codes; only the scheduling differs.
"""
