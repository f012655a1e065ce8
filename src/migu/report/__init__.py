"""Reports built from results JSON files only."""

from .runs import find_results, load_results
from .tables import format_matrix, report_markdown

__all__ = ["find_results", "format_matrix", "load_results", "report_markdown"]
