"""``camcli audit``: check what a model looks at, as a CI job that fails when it drifts.

A manifest lists images with their expected class and where the object is (boxes or a mask).
The audit explains each image, measures localisation (pointing game, energy in the boxes),
faithfulness (Average Drop, Increase in Confidence, deletion/insertion AUC) and, against an
earlier audit, how far each map moved; thresholds turn the numbers into pass/fail checks, and the
results are written as ``audit.json``, ``junit.xml``, ``summary.md`` and ``report.html``.

Modules, each doing one thing:

- :mod:`~camcli.audit.manifest`: reading and validating the manifest (CSV or JSONL);
- :mod:`~camcli.audit.metrics`: the pure numeric metrics, on arrays;
- :mod:`~camcli.audit.faithfulness`: the re-scoring protocol, given any scoring function;
- :mod:`~camcli.audit.checks`: thresholds and their pass/fail evaluation;
- :mod:`~camcli.audit.compare`: comparison with a baseline audit;
- :mod:`~camcli.audit.reports`, :mod:`~camcli.audit.htmlreport`, :mod:`~camcli.audit.drawing`:
  the outputs;
- :mod:`~camcli.audit.run`: the orchestration (:func:`run_audit`).

Importing this package does not import TensorFlow; running an audit needs a loaded
:class:`camcli.Explainer`.
"""

from __future__ import annotations

from camcli.audit.checks import THRESHOLDS

__all__ = [
    "THRESHOLDS",
    "AuditResult",
    "AuditSettings",
    "Manifest",
    "ManifestError",
    "load_manifest",
    "run_audit",
]

_LAZY = {
    "Manifest": "manifest",
    "ManifestError": "manifest",
    "load_manifest": "manifest",
    "AuditResult": "run",
    "AuditSettings": "run",
    "run_audit": "run",
}


def __getattr__(name: str):
    # Lazy, so that the CLI can read the threshold table without numpy and Pillow.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"camcli.audit.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'camcli.audit' has no attribute {name!r}")
