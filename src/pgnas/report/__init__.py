"""Stage 5 of the pipeline: summaries, pictures and reports of finished runs."""

from pgnas.report.summary import format_summary

__all__ = ["format_summary", "write_report"]


def write_report(*args, **kwargs):
    """See :func:`pgnas.report.render.write_report` (imported lazily: it needs matplotlib)."""
    from pgnas.report.render import write_report as _write

    return _write(*args, **kwargs)
