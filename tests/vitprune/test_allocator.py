"""Timing commands re-execute themselves with tcmalloc preloaded where it is installed, and say so."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest

from vitprune import allocator


@pytest.fixture
def execs(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator.os, "execve", lambda path, args, env: calls.append((args, env)))
    monkeypatch.delenv("VITPRUNE_MALLOC", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    return calls


def test_a_timing_command_re_executes_with_tcmalloc_preloaded(execs, monkeypatch, capsys):
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: f"lib{name}.so.4")
    allocator.arrange("profile", ["profile", "--model", "m"])
    ((args, env),) = execs
    assert args[1:] == ["-m", "vitprune", "profile", "--model", "m"]
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4" and env["VITPRUNE_MALLOC"] == "arranged"
    assert "timing with tcmalloc" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "env"),
    [
        ("jobs", {}),  # a client command times nothing
        ("profile", {"VITPRUNE_MALLOC": "system"}),  # the user keeps glibc's malloc
        ("profile", {"VITPRUNE_MALLOC": "arranged"}),  # already re-executed: never twice
        ("profile", {"LD_PRELOAD": "/opt/libjemalloc.so.2"}),  # the user's own allocator
    ],
)
def test_no_re_execution_where_it_is_not_wanted(execs, monkeypatch, command, env):
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: f"lib{name}.so.4")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    allocator.arrange(command, [command])
    assert execs == []


def test_without_tcmalloc_the_command_runs_on_and_says_how_to_get_it(execs, monkeypatch, capsys):
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: None)
    allocator.arrange("search", ["search"])
    assert execs == [] and "libtcmalloc-minimal4" in capsys.readouterr().err


@pytest.mark.skipif(ctypes.util.find_library("tcmalloc_minimal") is None, reason="tcmalloc is not installed")
def test_the_program_really_runs_again_under_tcmalloc():
    script = (
        "import sys, runpy; sys.argv = ['vitprune', 'profile', '--model', 'deit_tiny_patch16_224', '--dry-run']; "
        "runpy.run_module('vitprune', run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "timing with tcmalloc" in done.stderr and "entries x 5 passes" in done.stderr
