"""API under load while a search runs: 50 clients polling job status and Pareto fronts for 60 s.

The service runs as it is deployed: `vitprune serve --no-worker` (API + dashboard) and one `vitprune worker`,
on a fresh SQLite home. The worker runs a real DeiT-Tiny search (mobile-cpu, 0.7x, 200 calibration images).
Its speed is measured twice over equal windows of the same job: without clients, then with `--clients`
clients, each polling `GET /api/jobs/{id}` and `GET /api/jobs/{id}/pareto` in turn every `--interval` s
(a dashboard polls every 2 s). Reported: requests/s, p50/p99 latency, errors, and the search's slow-down.
Targets: p99 under 100 ms, zero errors, the search slower by less than 20%.

    python bench/api_load.py --data $VITPRUNE_DATA_DIR [--out bench/results] [--clients 50] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job(data: Path, trials: int) -> dict:
    return {
        "name": "load benchmark",
        "spec": {
            "model": "deit_tiny_patch16_224",
            "weights": str(data / "deit_tiny_patch16_224" / "model.safetensors"),
            "device": "mobile-cpu",
            "batch": 1,
            "budget_ratio": 0.7,
            "calib": str(data / "imagenet-sample"),
            "class_map": str(data / "imagenet_wnids.txt"),
            "calib_images": 200,
            "val_images": 50,
            "trials": trials,
        },
    }


def _done(client: httpx.Client, job_id: int) -> int:
    job = client.get(f"/api/jobs/{job_id}").json()
    if job["status"] in ("failed", "cancelled"):
        raise SystemExit(f"the benchmark's job {job['status']}: {job['error']}")
    return job["progress"]["done"]


def _trials_per_min(client: httpx.Client, job_id: int, seconds: float) -> float:
    start_done, start = _done(client, job_id), time.monotonic()
    time.sleep(seconds)
    return 60 * (_done(client, job_id) - start_done) / (time.monotonic() - start)


async def _poll(
    client: httpx.AsyncClient, job_id: int, seconds: float, interval: float, index: int
) -> tuple[list[float], int, float]:
    latencies, errors = [], 0
    paths = (f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/pareto")
    await asyncio.sleep(interval * index / 50)  # clients start spread out, as real ones would
    # A dashboard keeps its connection open between polls: the first request, which also opens
    # the connection, is timed apart (`connect_ms`), and the polling latencies are steady state.
    began = time.perf_counter()
    errors += (await client.get("/api/health")).status_code != 200
    first = time.perf_counter() - began
    end, turn = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        began = time.perf_counter()
        try:
            response = await client.get(paths[turn % 2])
            errors += response.status_code != 200
        except httpx.HTTPError:
            errors += 1
        latencies.append(time.perf_counter() - began)
        turn += 1
        await asyncio.sleep(max(0.0, interval - (time.perf_counter() - began)))
    return latencies, errors, first


async def _load(
    url: str, job_id: int, clients: int, seconds: float, interval: float
) -> tuple[list[float], int, list[float]]:
    # Every client is built before any is timed: building one takes milliseconds of this process'
    # event loop (its TLS context), which would otherwise be counted in the other clients' latencies.
    sessions = [httpx.AsyncClient(base_url=url, timeout=10) for _ in range(clients)]
    try:
        polls = (_poll(session, job_id, seconds, interval, i) for i, session in enumerate(sessions))
        results = await asyncio.gather(*polls)
    finally:
        await asyncio.gather(*(session.aclose() for session in sessions))
    latencies = [x for polled, _, _ in results for x in polled]
    return latencies, sum(errors for _, errors, _ in results), sorted(first for _, _, first in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=os.environ.get("VITPRUNE_DATA_DIR"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between one client's requests")
    args = parser.parse_args()
    if args.data is None:
        parser.error("give --data DIR or set VITPRUNE_DATA_DIR")
    data = args.data.resolve()
    home = Path(tempfile.mkdtemp(prefix="vitprune-load-"))
    env = os.environ | {"VITPRUNE_HOME": str(home), "VITPRUNE_ROOTS": json.dumps([str(data)])}
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (home / "service.log").open("w")
    command = [sys.executable, "-m", "vitprune"]
    api = subprocess.Popen([*command, "serve", "--no-worker", "--port", str(port)], env=env, stdout=log, stderr=log)
    worker = subprocess.Popen([*command, "worker", "--threads", "1"], env=env, stdout=log, stderr=log)
    try:
        client = httpx.Client(base_url=url, timeout=30)
        while True:
            try:
                client.get("/api/health")
                break
            except httpx.TransportError:
                time.sleep(0.5)
        # Enough trials to outlast warm-up and both windows (about 2 s per trial here).
        trials = int(4 * args.seconds / 1.5) + 20
        response = client.post("/api/jobs", json=_job(data, trials))
        response.raise_for_status()
        job_id = response.json()["id"]
        while _done(client, job_id) < 10:  # past the dense pass, image decoding and the first trials
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited; see {home / 'service.log'}")
            time.sleep(1)
        quiet = _trials_per_min(client, job_id, args.seconds)
        started = time.monotonic()
        before = _done(client, job_id)
        latencies, errors, connects = asyncio.run(_load(url, job_id, args.clients, args.seconds, args.interval))
        loaded = 60 * (_done(client, job_id) - before) / (time.monotonic() - started)
        assert _done(client, job_id) < trials, "the job ended inside the window: raise the trial count"
    finally:
        for process in (worker, api):
            process.terminate()
            process.wait(timeout=60)
    latencies.sort()
    result = {
        "clients": args.clients,
        "seconds": args.seconds,
        "interval_s": args.interval,
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / args.seconds, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
        "max_ms": round(1000 * latencies[-1], 1),
        "errors": errors,
        "connect_p50_ms": round(1000 * statistics.median(connects), 1),
        "connect_max_ms": round(1000 * connects[-1], 1),
        "trials_per_min_quiet": round(quiet, 2),
        "trials_per_min_loaded": round(loaded, 2),
        "search_slowdown_pct": round(100 * (1 - loaded / quiet), 1),
        "cpu_cores": os.cpu_count(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "api_load.json").write_text(json.dumps(result, indent=2) + "\n")
    table = (
        "| clients | requests/s | p50 ms | p99 ms | max ms | errors | first request (connects) p50 / max ms "
        "| search trials/min quiet -> loaded | slow-down |\n"
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
        f"| {args.clients} | {result['requests_per_s']} | {result['p50_ms']} | {result['p99_ms']} "
        f"| {result['max_ms']} | {errors} | {result['connect_p50_ms']} / {result['connect_max_ms']} "
        f"| {result['trials_per_min_quiet']} -> {result['trials_per_min_loaded']} "
        f"| {result['search_slowdown_pct']}% |\n"
    )
    (args.out / "api_load.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
