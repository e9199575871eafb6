"""Reports people look at: the run report (``camcli report``, ``camcli explain --report``) and
the page machinery it shares with the audit report.

- :mod:`~camcli.report.page`: page shell, theme (light and dark), escaping, embedded JSON;
- :mod:`~camcli.report.thumbnails`: small JPEG thumbnails (files, or ``data:`` URIs);
- :mod:`~camcli.report.pictures`: which files a record may make the report read (its own
  overlay; its input, verified by sha256) — records are not trusted;
- :mod:`~camcli.report.folder`: the report's folder and ``thumbs/``, never written through a link;
- :mod:`~camcli.report.sources`: finding records and failure logs (local folders for now);
- :mod:`~camcli.report.runlog`: the failure log a run leaves under ``--out-dir``;
- :mod:`~camcli.report.summary`: records to cards, counts and chart bins (pure);
- :mod:`~camcli.report.build`, :mod:`~camcli.report.runpage`: the run report itself.

From Python: ``build_report(["out/"], "camcli-report")``, or feed a run's results to a
:class:`RunRecorder` and call :meth:`RunRecorder.finish`.
"""

from __future__ import annotations

import os
from pathlib import Path

from camcli.report.build import DEFAULT_DIR, ReportResult, build_report
from camcli.report.runlog import failure, write_failures

__all__ = ["DEFAULT_DIR", "ReportResult", "RunRecorder", "build_report"]


class RunRecorder:
    """What one ``explain`` run produced, result by result: its records and its failures.

    ``finish()`` logs the failures under ``out_dir`` (when there is one) and, given
    ``report_dir``, builds the run's report from exactly this run's records and failures.
    """

    def __init__(self, out_dir: str | os.PathLike | None = None):
        from camcli import storage

        # Reports and failure logs are local for now: with a URL --out-dir there is neither.
        self.local = not storage.is_url(out_dir)
        self.out_dir = Path(out_dir) if out_dir is not None and self.local else None
        self.records: list[Path] = []
        self.failures: list[dict] = []

    def add(self, result) -> None:
        """One :class:`camcli.api.ImageResult` (explained, skipped as up to date, or failed)."""
        from camcli.outputs import OutputPaths
        from camcli.storage import is_url as storage_url

        if not result.ok:
            self.failures.append(failure(str(result.path), result.error))
        elif self.local and not storage_url(result.path):
            self.records.append(OutputPaths.for_input(Path(result.path), self.out_dir).record)

    def watch(self, results):
        """``results``, unchanged, each one recorded as it passes."""
        for result in results:
            self.add(result)
            yield result

    def finish(self, report_dir: str | os.PathLike | None = None, **options) -> ReportResult | None:
        """Write the failure log, then the report (``options``: those of :func:`build_report`)."""
        if self.out_dir is not None:
            write_failures(self.out_dir, self.failures)
        if report_dir is None:
            return None
        records = [path for path in self.records if path.is_file()]
        return build_report(records, report_dir, failures=self.failures, **options)
