"""Adapters for agent frameworks: ``ctxlink.integrations.<framework>``, each behind an optional
extra. Nothing of a framework is imported until its adapter module is."""
