"""Integrations of the MIGU core with training frameworks."""
