"""Stage 5 of the pipeline: summaries and reports of finished runs."""

from pgnas.report.summary import format_summary

__all__ = ["format_summary"]
