"""Analyses that run a model (unlike ``migu.report``, which reads results files only)."""
