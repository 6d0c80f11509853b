"""Data files shipped with plumb (the quickstart preference set)."""
