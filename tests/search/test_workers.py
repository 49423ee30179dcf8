"""Several processes on one job: `vitprune worker` subprocesses sharing a study, a killed worker, a resumed search.

The storage is parametrized over SQLite (a file) and PostgreSQL (a throw-away cluster). Workers run with one
torch thread so that two of them fit on two cores. Also pinned: no two processes ever claim one waiting
trial (SQLite included), a trial orphaned before its first heartbeat is retried, and a worker that loses the
last slot to another counts no trial.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from search import run_search, run_worker, submit
from search.driver import run_trials
from search.study import open_storage, progress
from tests.search.tiny import tiny_job

pytestmark = pytest.mark.slow

WORKER_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of the small ViT, 60 calibration and 20 validation images, written once for this module."""
    root = tmp_path_factory.mktemp("tiny")
    tiny_job(root)
    return root


@pytest.fixture(params=["sqlite", "postgres"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'search.db'}"
    return request.getfixturevalue("postgres_db_url")


class Worker:
    """A `vitprune worker` subprocess; stdout and stderr go to files (a full pipe would block it)."""

    def __init__(self, url: str, log_dir: Path, name: str, *options: str) -> None:
        self.stdout = log_dir / f"{name}.out"
        self.stderr = log_dir / f"{name}.err"
        env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "vitprune", "worker", "--db", url, "--threads", "1", *options]
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err, env=env)

    def wait(self, timeout: float = WORKER_TIMEOUT_S) -> int:
        """Wait for a normal exit and return its `trials_run`."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"worker still running after {timeout} s:\n{self.log()}")
        assert code == 0, f"worker exited with {code}:\n{self.log()}"
        lines = self.stdout.read_text().strip().splitlines()
        assert lines, f"worker printed nothing on stdout:\n{self.log()}"
        return json.loads(lines[-1])["trials_run"]

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def log(self) -> str:
        return f"stdout: {self.stdout.read_text()}\nstderr (tail): {self.stderr.read_text()[-3000:]}"


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Starts workers; any still alive at the end of the test is killed."""
    workers: list[Worker] = []

    def start(url: str, *options: str) -> Worker:
        worker = Worker(url, tmp_path, f"worker{len(workers)}", *options)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if worker.alive():
            worker.process.kill()
            worker.process.wait()


def slot_trials(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials() if t.user_attrs.get("slot")]


def assert_no_config_evaluated_twice(study: optuna.Study) -> None:
    """Every config is priced / scored once; a repeat is marked as a duplicate and copies the first result."""
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    by_number = {t.number: t for t in complete}
    originals = Counter(t.user_attrs["config_key"] for t in complete if "duplicate_of" not in t.user_attrs)
    twice = {key: n for key, n in originals.items() if n > 1}
    assert not twice, f"configs run more than once without being marked duplicates: {twice}"
    for t in complete:
        if "duplicate_of" in t.user_attrs:
            first = by_number[t.user_attrs["duplicate_of"]]
            assert first.user_attrs["config_key"] == t.user_attrs["config_key"] and first.values == t.values


def wait_for(condition: Callable[[], bool], worker: Worker, what: str, timeout: float = WORKER_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert worker.alive(), f"worker exited before {what}:\n{worker.log()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s:\n{worker.log()}"
        time.sleep(0.05)


def test_two_workers_share_one_job_and_run_exactly_its_trials(tiny_root, storage_url, start_worker):
    trials = 40
    job = tiny_job(tiny_root, trials=trials)
    study, _ = submit(job, open_storage(storage_url))
    assert progress(study).waiting == trials

    workers = [start_worker(storage_url, "--idle-exit", "3") for _ in range(2)]
    ran = [worker.wait() for worker in workers]

    assert all(n >= 1 for n in ran), f"one worker ran every trial: {ran}"
    assert sum(ran) == trials, f"workers report {ran} trials run for a job of {trials}"
    slots = slot_trials(study)
    assert Counter(t.state for t in slots) == {TrialState.COMPLETE: trials}
    assert not study.get_trials(states=(TrialState.WAITING, TrialState.RUNNING))
    state = progress(study)
    assert state.finished and state.done == trials
    assert_no_config_evaluated_twice(study)


def _running_slots(url: str, name: str) -> dict[int, bool] | None:
    """Running slot trials by number, each with whether it is inside its objective (heartbeat sent, params
    suggested); None while the database is locked.

    Meant for a stopped worker: a stopped SQLite writer may hold the lock, so this gives up after two seconds.
    """
    engine_kwargs = {"connect_args": {"timeout": 2}} if url.startswith("sqlite") else {}
    storage = None
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        study = optuna.load_study(study_name=name, storage=storage)
        running = {t._trial_id: t for t in slot_trials(study) if t.state == TrialState.RUNNING}
        with storage.engine.connect() as connection:
            beating = {row[0] for row in connection.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats"))}
        return {t.number: trial_id in beating and "config" in t.user_attrs for trial_id, t in running.items()}
    except (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError):
        return None
    finally:
        if storage is not None:
            storage.engine.dispose()


def test_a_killed_workers_trial_is_failed_and_retried_by_another_worker(tiny_root, storage_url, start_worker):
    trials = 30
    job = tiny_job(tiny_root, trials=trials)
    study, _ = submit(job, open_storage(storage_url))
    beat = ("--heartbeat", "1", "--grace", "3")

    first = start_worker(storage_url, *beat, "--idle-exit", "60")
    wait_for(lambda: progress(study).done >= 1, first, "finished trial")
    seen: dict[int, bool] | None = None
    for _ in range(20):
        # Catch it inside the objective: its trial has sent a heartbeat and has all its parameters. (A worker
        # killed before its trial's first heartbeat is the case of the orphan test below.)
        first.signal(signal.SIGSTOP)
        seen = _running_slots(storage_url, job.study_name())
        if seen and all(seen.values()):
            break
        first.signal(signal.SIGCONT)
        time.sleep(0.1)
    assert seen and all(seen.values()), f"never caught the worker inside a trial: {seen}"
    first.process.kill()
    first.process.wait()
    running = {t.number: t for t in slot_trials(study) if t.state == TrialState.RUNNING}
    assert set(running) == set(seen)
    assert progress(study).done < trials

    second = start_worker(storage_url, *beat, "--idle-exit", "5")
    assert second.wait() >= 1

    trials_by_number = {t.number: t for t in study.get_trials()}
    for number, killed in running.items():
        assert trials_by_number[number].state == TrialState.FAIL
        retries = [t for t in trials_by_number.values() if number in t.system_attrs.get("retry_history", ())]
        assert [t.state for t in retries] == [TrialState.COMPLETE]
        assert retries[0].params == killed.params and retries[0].user_attrs.get("slot")
    state = progress(study)
    assert state.finished and state.done == trials
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == trials
    assert_no_config_evaluated_twice(study)


def test_a_trial_orphaned_before_its_first_heartbeat_is_retried(tiny_root, storage_url):
    trials = 3
    job = tiny_job(tiny_root, trials=trials)
    study, _ = submit(job, open_storage(storage_url))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Heartbeat of storage is supposed to be used with optimize"
        orphan = study.ask()  # what a worker killed while sampling leaves: a running slot without a heartbeat
    assert orphan.user_attrs.get("slot")

    assert run_worker(storage_url, heartbeat_s=1, grace_s=1, idle_exit_s=4, poll_s=0.5) >= trials - 1

    trials_by_number = {t.number: t for t in study.get_trials()}
    assert trials_by_number[orphan.number].state == TrialState.FAIL
    retries = [t for t in trials_by_number.values() if orphan.number in t.system_attrs.get("retry_history", ())]
    assert [t.state for t in retries] == [TrialState.COMPLETE]
    state = progress(study)
    assert state.finished and state.done == trials


def test_losing_the_last_slot_to_another_worker_counts_no_trial(tiny_root, tmp_path):
    url = f"sqlite:///{tmp_path / 'search.db'}"
    job = tiny_job(tiny_root, trials=1)
    study, context = submit(job, open_storage(url))
    other_worker = optuna.load_study(study_name=study.study_name, storage=open_storage(url))
    real_get_trials = study.get_trials
    checks = 0

    def get_trials_then_lose_the_slot(*args, **kwargs):
        nonlocal checks
        found = real_get_trials(*args, **kwargs)
        checks += 1
        if checks == 1:  # the other worker takes the only slot right after this worker saw it waiting
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                other_worker.ask()
        return found

    study.get_trials = get_trials_then_lose_the_slot
    ran = run_trials(study, context)
    study.get_trials = real_get_trials

    assert [t.state for t in slot_trials(study)] == [TrialState.RUNNING]  # the other worker holds it
    assert ran == 0


TAKE_SLOTS = """
import json, sys, time, warnings
from pathlib import Path
import optuna
from search.study import open_storage
url, name, ready, go = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.simplefilter("ignore")
study = optuna.load_study(study_name=name, storage=open_storage(url))
ready.touch()
while not go.exists():
    time.sleep(0.01)
taken = []
while (trial := study.ask()).user_attrs.get("slot"):
    taken.append(trial.number)
    time.sleep(0.01)  # a trial's work: without it SQLite's unfair lock can let one process take every slot
print(json.dumps(taken))
"""


@pytest.mark.parametrize(
    "storage_url",
    [
        "sqlite",
        "postgres",
    ],
    indirect=True,
)
def test_two_processes_never_take_the_same_waiting_slot(storage_url, tmp_path):
    slots = 200
    study = optuna.create_study(study_name="slots", storage=open_storage(storage_url))
    for _ in range(slots):
        study.enqueue_trial({}, user_attrs={"slot": True})
    go = tmp_path / "go"
    takers = []
    for index in range(2):
        ready = tmp_path / f"ready{index}"
        command = [sys.executable, "-c", TAKE_SLOTS, storage_url, "slots", str(ready), str(go)]
        takers.append((ready, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    try:
        deadline = time.monotonic() + 120
        while not all(ready.exists() for ready, _ in takers):
            assert all(p.poll() is None for _, p in takers), [p.communicate() for _, p in takers]
            assert time.monotonic() < deadline, "slot takers did not start"
            time.sleep(0.05)
        go.touch()  # both start taking at once
        outputs = [p.communicate(timeout=120) for _, p in takers]
    finally:
        for _, p in takers:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for _, p in takers), outputs
    first, second = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
    assert first and second, "one process took every slot: no contention was tested"
    assert sorted(set(first) & set(second)) == []
    assert sorted(first + second) == list(range(slots))


def test_a_rerun_resumes_the_job_and_a_larger_count_adds_only_the_difference(tiny_root, tmp_path):
    url = f"sqlite:///{tmp_path / 'search.db'}"
    job = tiny_job(tiny_root, trials=12)
    first = run_search(job, url, tmp_path / "out", show_progress=False)
    study = optuna.load_study(study_name=job.study_name(), storage=url)
    before = study.get_trials()
    assert first.trials["complete"] == 12 == len(before)
    assert first.models and all((tmp_path / "out" / m["bundle"]).is_dir() for m in first.models)

    again = run_search(job, url, tmp_path / "out", show_progress=False)
    after = study.get_trials()
    assert len(after) == len(before)
    assert [(t.number, t.state, t.values) for t in after] == [(t.number, t.state, t.values) for t in before]
    assert json.loads(json.dumps(again.models)) == json.loads(json.dumps(first.models))
    saved = json.loads((tmp_path / "out" / "pareto.json").read_text())
    assert [m["bundle"] for m in saved["models"]] == [m["bundle"] for m in first.models]

    more = run_search(job.model_copy(update={"trials": 16}), url, tmp_path / "out", show_progress=False)
    assert more.trials["complete"] == 16
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 16 == len(study.get_trials())
    assert [t.values for t in complete[:12]] == [t.values for t in before]


def test_opening_a_storage_retries_while_another_process_creates_its_tables(monkeypatch, tmp_path):
    import search.study as study_module

    real, calls = study_module.RDBStorage, []
    lost_race = sqlalchemy.exc.ProgrammingError("CREATE TYPE studydirection", {}, Exception("already exists"))

    def racing(url, **kwargs):
        calls.append(url)
        if len(calls) == 1 or "never" in url:  # PostgreSQL's answer to the process that lost the race
            raise lost_race
        return real(url, **kwargs)

    monkeypatch.setattr(study_module, "RDBStorage", racing)
    monkeypatch.setattr(study_module.time, "sleep", lambda s: None)
    storage = open_storage(f"sqlite:///{tmp_path / 'race.db'}")
    assert len(calls) == 2 and storage.get_all_studies() == []
    calls.clear()
    with pytest.raises(sqlalchemy.exc.ProgrammingError):  # an error that persists is not hidden
        open_storage(f"sqlite:///{tmp_path / 'never.db'}")
    assert len(calls) == study_module.STORAGE_ATTEMPTS
