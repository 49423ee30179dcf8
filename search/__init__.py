"""search: not built yet (see the issues)."""
