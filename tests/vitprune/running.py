"""Running `vitprune` in the test process: its exit code and what it printed."""

from __future__ import annotations

from vitprune.cli import main


def run(capsys, *argv: object) -> tuple[int, str, str]:
    """`vitprune ARGV` (each argument as a string): (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err
