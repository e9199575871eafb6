"""Explaining on a Ray cluster from Python (``pip install 'camcli[ray]'``).

``explain_dataset(ds, model=..., out_dir=...)`` maps a Ray dataset of paths (or of bytes with
paths) to a dataset of result rows, lazily; ``run(paths, model_options, ...)`` is what
``camcli explain --engine ray`` calls. See :mod:`camcli.distributed.ray`.
"""

from camcli.distributed.ray import ROW_FIELDS, RayOptions, connected, explain_dataset, run

__all__ = ["ROW_FIELDS", "RayOptions", "connected", "explain_dataset", "run"]
