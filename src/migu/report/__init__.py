"""Reports built from results JSON files only."""

from .tables import find_results, format_matrix, load_results, report_markdown

__all__ = ["find_results", "format_matrix", "load_results", "report_markdown"]
