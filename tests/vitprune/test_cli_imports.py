"""The command line starts light: `--help` and the client commands run with torch and the service unimportable.

Each check runs in a fresh interpreter whose import system refuses the heavy packages, so a module that
imports one of them up front (rather than in the command that needs it) fails the command.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch", "torchvision", "timm", "optuna", "sqlalchemy", "fastapi", "uvicorn", "onnx", "onnxruntime")

PRELUDE = textwrap.dedent(
    f"""
    import importlib.abc
    import sys

    HEAVY = {HEAVY!r}

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY:
                raise ImportError(f"{{name}} imported by a light command")
            return None

    sys.meta_path.insert(0, Refuse())

    import httpx

    from vitprune import cli_client
    from vitprune.cli import main

    def answer(request):
        # What the service would say, enough for each command to run to its end.
        if request.method == "POST" and request.url.path == "/api/jobs":
            job = {{"id": 1, "status": "queued", "name": "a job", "progress": {{"done": 0, "total": 4}}}}
            return httpx.Response(201, json=job)
        if request.url.path == "/api/jobs":
            return httpx.Response(200, json=[])
        return httpx.Response(404, json={{"detail": "no such model"}})

    cli_client.client = lambda server, token: httpx.Client(
        base_url=server, transport=httpx.MockTransport(answer)
    )
    """
)


def run_light(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("argv", [["--help"], ["submit", "--help"], ["search", "--help"], ["lut", "validate", "-h"]])
def test_help_imports_no_heavy_package(argv):
    result = run_light(
        f"""
        try:
            main({argv!r})
        except SystemExit as done:
            assert done.code == 0, done.code
        assert not [m for m in sys.modules if m.split(".")[0] in HEAVY]
        """
    )
    assert result.returncode == 0, result.stderr
    assert "usage: vitprune" in result.stdout


SUBMIT = ["submit", "--model", "deit_tiny_patch16_224", "--weights", "w.safetensors", "--calib", "images"]


@pytest.mark.parametrize(
    ("argv", "code", "expected"),
    [
        (["jobs"], 0, "no jobs"),
        (["download", "7"], 2, "no such model"),
        ([*SUBMIT, "--budget-ratio", "0.5"], 0, "job 1"),
    ],
)
def test_client_commands_run_without_torch(argv, code, expected):
    result = run_light(
        f"""
        code = main({[*argv, "--server", "http://vitprune.test:8000"]!r})
        assert code == {code}, code
        assert not [m for m in sys.modules if m.split(".")[0] in HEAVY]
        """
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout + result.stderr


def test_the_refusal_is_real():
    """The blocker does refuse: a command that needs torch fails under it."""
    result = run_light("main(['prune', '--model', 'm', '--weights', 'w', '--out', 'o'])")
    assert result.returncode != 0 and "imported by a light command" in result.stderr
