"""The Textual terminal UI (not built yet: every action exists in the CLI)."""
