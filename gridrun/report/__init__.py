"""After a search: the summary (table, best trial, Pareto front, importance) and the report plots."""

from gridrun.report.plots import write_report
from gridrun.report.summary import format_summary, importance, load_summary, summarize

__all__ = ["format_summary", "importance", "load_summary", "summarize", "write_report"]
