"""server: not built yet (see the issues)."""
