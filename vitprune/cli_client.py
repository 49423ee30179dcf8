"""`vitprune submit`, `vitprune jobs` and `vitprune download`: the command line as a client of a running service.

vitprune submit    queue a search job on the service (with --upload, local weights and images are sent too); its
                   last lines, JOB_ID=N and with --wait MODEL_IDS='...', are shell assignments for what follows
vitprune jobs      list the service's jobs, or show one job with its Pareto models
vitprune download  fetch a pruned model (bundle zip, safetensors, config or ONNX), its sha256 verified

All three talk to the REST API at --server (default $VITPRUNE_SERVER, else a local `vitprune serve`)
and send --token (default $VITPRUNE_TOKEN) as a bearer token.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import shlex
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import httpx
from tqdm import tqdm

from pruning.image_files import IMAGE_EXTENSIONS
from vitprune.cli_search import add_job_options, job_from_args

__all__ = ["CommandError", "add_commands", "auth_headers", "client", "upload_inputs", "zip_image_folder"]

SERVER_ENV = "VITPRUNE_SERVER"
TOKEN_ENV = "VITPRUNE_TOKEN"
DEFAULT_SERVER = "http://127.0.0.1:8000"
JOB_STATES = ("preparing", "queued", "running", "materialising", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")
FORMATS = {"bundle": ".zip", "safetensors": ".safetensors", "config": ".config.json", "onnx": ".onnx"}
CHECKSUM_HEADER = "X-Checksum-SHA256"
UPLOAD_PREFIX = "upload:"
# Submitting checks the job on the server (loads the weights, prices the model) and the first ONNX download
# exports the model: both take far longer than a plain request, so only connecting has a short timeout.
TIMEOUT = httpx.Timeout(600.0, connect=10.0)
_CHUNK = 1 << 20
_MB = 1 << 20


class CommandError(Exception):
    """A refused request or a failed check; the message says what went wrong and what to do."""


def auth_headers(token: str | None) -> dict[str, str]:
    """The bearer-token header, or none without a token."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(server: str, token: str | None) -> httpx.Client:
    """The HTTP client every command uses (tests replace this function to talk to an in-process app)."""
    return httpx.Client(base_url=server, headers=auth_headers(token), timeout=TIMEOUT)


def _server(args: argparse.Namespace) -> str:
    """--server, else $VITPRUNE_SERVER, else the local default; a bare host:port gets http://."""
    url = (args.server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER).strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def _connect(args: argparse.Namespace) -> httpx.Client:
    return client(_server(args), args.token or os.environ.get(TOKEN_ENV))


def _detail(response: httpx.Response) -> str:
    """The server's explanation: FastAPI's `detail` (a message, or a list of validation errors)."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list):
        # Request validation errors: "spec.trials: Input should be greater than or equal to 1; ...".
        parts = []
        for error in detail:
            location = ".".join(str(part) for part in error.get("loc", ())[1:])
            parts.append(f"{location}: {error.get('msg')}" if location else str(error.get("msg")))
        return "; ".join(parts)
    if detail is not None:
        return str(detail)
    return response.text.strip()[:500] or response.reason_phrase


def _check(response: httpx.Response) -> httpx.Response:
    """`response`, or CommandError with the server's message when it is a 4xx/5xx answer."""
    if response.is_error:
        raise CommandError(f"the server answered {response.status_code}: {_detail(response)}")
    return response


def _handled(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn refused requests and unreachable servers into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        name = f"vitprune {getattr(args, 'command', None) or command.__name__.removeprefix('cmd_')}"
        try:
            return command(args)
        except CommandError as error:
            message = str(error)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            message = (
                f"the server is not reachable at {_server(args)} ({error}); start one with `vitprune serve`, "
                f"or pass --server URL (or set {SERVER_ENV})"
            )
        except httpx.UnsupportedProtocol:
            message = f"--server {_server(args)} is not an http(s) URL, e.g. {DEFAULT_SERVER}"
        except httpx.TransportError as error:
            message = f"the request to {_server(args)} failed: {error!r}"
        print(f"{name}: error: {message}", file=sys.stderr)
        return 2

    return run


# --- submit -------------------------------------------------------------------------------------------------------


def _is_ref(value: str) -> bool:
    return str(value).startswith(UPLOAD_PREFIX)


def _upload_name(name: str, limit: int = 120) -> str:
    """A file name the upload API accepts (letters, digits, '.', '_', '-'; starting with a letter or digit)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("._-")[:limit]
    return safe or "upload"


def _image_files(root: Path) -> list[tuple[Path, str]]:
    """(file, name in the archive) for every image the service will label: root/<class>/.../<image>.

    Mirrors what the ImageFolder loader reads and the server keeps: images directly in root have no
    class, and hidden files and folders (caches, .DS_Store) are not part of the data set.
    """
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(root)
            if (
                path.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in relative.parts)
                and path.is_file()
            ):
                found.append((path, relative.as_posix()))
    return found


def zip_image_folder(root: Path, dest: Path) -> int:
    """Write the images of the ImageFolder `root` into the zip `dest`; returns how many. Nothing else goes in."""
    images = _image_files(root)
    if not images:
        raise CommandError(
            f"{root} holds no images in class folders; the service needs an ImageFolder: {root}/<class>/<image> "
            f"with extensions {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    # Stored, not deflated: image formats are compressed already, and a flat-colour BMP deflated would look
    # like a zip bomb to the server's compression-ratio check.
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as archive:
        for path, name in images:
            archive.write(path, name)
    return len(images)


def _upload_weights(http: httpx.Client, path: Path) -> str:
    if not path.is_file():
        raise CommandError(f"--weights {path}: no such file here (with --upload, paths are on this machine)")
    print(f"uploading {path} ({path.stat().st_size / _MB:.1f} MB)", file=sys.stderr)
    with path.open("rb") as body:
        reply = _check(http.put("/api/uploads/weights", params={"filename": _upload_name(path.name)}, content=body))
    return reply.json()["ref"]


def _upload_dataset(http: httpx.Client, root: Path) -> str:
    if not root.is_dir():
        raise CommandError(f"{root}: no such folder here (with --upload, image folders are on this machine)")
    with tempfile.TemporaryDirectory(prefix="vitprune-upload-") as tmp:
        archive = Path(tmp) / f"{_upload_name(root.resolve().name or 'images')}.zip"
        count = zip_image_folder(root, archive)
        print(f"uploading {root} ({count} images, {archive.stat().st_size / _MB:.1f} MB)", file=sys.stderr)
        with archive.open("rb") as body:
            reply = _check(http.put("/api/uploads/datasets", params={"filename": archive.name}, content=body)).json()
    print(f"  {reply.get('images')} images in {reply.get('classes')} classes: {reply['ref']}", file=sys.stderr)
    return reply["ref"]


def upload_inputs(http: httpx.Client, spec: dict) -> dict:
    """The JSON job spec with its local weights file and image folders uploaded and replaced by their refs."""
    spec = dict(spec)
    if spec.get("weights") and not _is_ref(spec["weights"]):
        spec["weights"] = _upload_weights(http, Path(spec["weights"]))
    uploaded: dict[str, str] = {}  # one upload when two image fields name the same folder
    for field in ("calib", "val", "train"):
        value = spec.get(field)
        if value and not _is_ref(value):
            if value not in uploaded:
                uploaded[value] = _upload_dataset(http, Path(value))
            spec[field] = uploaded[value]
    for field in ("class_map", "table"):
        # The API has no upload for these small files, so they can only name files on the server.
        if spec.get(field) and not _is_ref(spec[field]):
            print(f"note: {field} {spec[field]} is not uploaded; it must be a path on the server", file=sys.stderr)
    return spec


def _preparation_text(job: dict) -> str | None:
    """What a `preparing` job is doing, e.g. "preparing the demo model: training the ViT 120/700"; else None."""
    preparation = job.get("preparation")
    if job.get("status") != "preparing" or not preparation:
        return None
    return f"{preparation['stage']} {preparation['done']}/{preparation['total']}"


def _progress_text(job: dict) -> str:
    if preparing := _preparation_text(job):
        return preparing
    progress = job.get("progress") or {}
    parts = [job["status"], f"{progress.get('feasible', 0)} within budget"]
    best = _best_text(job)
    if best:
        parts.append(best)
    return ", ".join(parts)


def _best_calib(job: dict) -> float | None:
    """The best calibration top-1 within budget (`best_accuracy` is its older name, from older servers)."""
    progress = job.get("progress") or {}
    return progress.get("best_calib_accuracy", progress.get("best_accuracy"))


def _best_text(job: dict) -> str | None:
    """The best accuracy within budget, named by its images: validation first where the models have it."""
    val, calib = job.get("best_val_accuracy"), _best_calib(job)
    if val is not None:
        return f"best validation top-1 {val:.1f}%" + (f" (calibration {calib:.1f}%)" if calib is not None else "")
    return f"best calibration top-1 {calib:.1f}%" if calib is not None else None


def _images_text(job: dict) -> str | None:
    """What the job's figures were measured on, e.g. "validation: imagenet-sample (500 images); calibration: ..."."""
    parts = []
    for key, role in (("val_images", "validation"), ("calib_images", "calibration")):
        entry = job.get(key)
        if entry:
            count = f" ({entry['images']} images)" if entry.get("images") else ""
            parts.append(f"{role}: {display_name(entry['name'])}{count}")
    return "; ".join(parts) or None


def wait_for(http: httpx.Client, job: dict, interval: float) -> dict:
    """Poll the job until it reaches a final status, showing its trials as a progress bar."""
    with tqdm(total=job["progress"]["total"], unit="trial", desc=f"job {job['id']}", dynamic_ncols=True) as bar:
        while True:
            job = _check(http.get(f"/api/jobs/{job['id']}")).json()
            progress = job["progress"]
            bar.total = progress["total"]
            bar.n = min(progress["done"], progress["total"])
            bar.set_postfix_str(_progress_text(job), refresh=False)
            bar.refresh()
            if job["status"] in FINAL_STATES:
                return job
            time.sleep(interval)


def shell_line(name: str, value: object) -> str:
    """`NAME=value` as a POSIX shell reads it (`eval`), quoted only where it must be."""
    text = str(value)
    return f"{name}={text}" if re.fullmatch(r"[A-Za-z0-9_.:/-]+", text) else f"{name}={shlex.quote(text)}"


@_handled
def cmd_submit(args: argparse.Namespace) -> int:
    spec = json.loads(job_from_args(args).model_dump_json())
    server = _server(args)
    with _connect(args) as http:
        if args.upload:
            spec = upload_inputs(http, spec)
        body = {"spec": spec} | ({"name": args.name} if args.name else {})
        job = _check(http.post("/api/jobs", json=body)).json()
        print(f"job {job['id']} {job['status']}: {display_name(job['name'])}")
        print(f"dashboard: {server}/jobs/{job['id']}")
        # For scripts and the README's tour: `eval "$(grep -E '^(JOB_ID|MODEL_IDS)=' out)"` sets them.
        print(shell_line("JOB_ID", job["id"]), flush=True)
        if not args.wait:
            return 0
        try:
            job = wait_for(http, job, args.interval)
        except KeyboardInterrupt:
            print(f"stopped waiting; job {job['id']} keeps running on the server", file=sys.stderr)
            return 130
        models = _check(http.get(f"/api/jobs/{job['id']}/pareto")).json()["models"] if job["status"] == "done" else []
    print(f"job {job['id']} {_progress_text(job)}")
    if job["status"] != "done":
        if job.get("error"):
            print(f"vitprune submit: job {job['id']} {job['status']}: {job['error']}", file=sys.stderr)
        return 1
    print(f"models: vitprune jobs {job['id']}")
    # The Pareto models, fastest first: `vitprune download ${MODEL_IDS%% *}` fetches the fastest.
    print(shell_line("MODEL_IDS", " ".join(str(model["id"]) for model in models)))
    return 0


# --- jobs ---------------------------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _number(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def display_name(name: str, limit: int | None = None) -> str:
    """A job's name for a terminal: without bidirectional controls (U+202E, right-to-left override, would
    reorder the rest of the line, columns after it included), shortened to `limit` characters with "…"."""
    text = _BIDI_CONTROLS.sub("", name)
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def _model_text(job: dict) -> str:
    """What the model is (the demo's small ViT, not the timm name it is built from)."""
    return job.get("model_label") or job.get("model", "-")


def _status_cell(job: dict) -> str:
    """The status; a preparing job's with how far its current stage is."""
    preparation = job.get("preparation")
    if job["status"] != "preparing" or not preparation or not preparation.get("total"):
        return job["status"]
    return f"preparing {100 * preparation['done'] // preparation['total']}%"


def format_jobs(jobs: list[dict]) -> str:
    """One line per job: id, name, status, trials done, best top-1 within budget on validation (the Pareto models)
    and calibration images (the search's trials), model."""
    if not jobs:
        return "no jobs"
    rows = [
        [
            str(job["id"]),
            display_name(job["name"], 40),
            _status_cell(job),
            f"{job['progress']['done']}/{job['progress']['total']}",
            _number(job.get("best_val_accuracy"), ".1f", "%"),
            _number(_best_calib(job), ".1f", "%"),
            _model_text(job),
        ]
        for job in jobs
    ]
    return _table(["id", "name", "status", "trials", "best val top-1", "best calib top-1", "model"], rows)


def format_job(job: dict, pareto: dict, server: str) -> str:
    """A job's status, budget and progress, then its Pareto models (fastest first)."""
    progress = job["progress"]
    eta = f", about {progress['eta_s'] / 60:.0f} min left" if progress.get("eta_s") else ""
    budget = pareto.get("budget_ms", job.get("budget_ms"))
    dense = pareto.get("dense_ms", job.get("dense_ms"))
    lines = [
        f"job {job['id']}: {display_name(job['name'])}",
        f"status     {_progress_text(job)}; {progress['done']}/{progress['total']} trials{eta}",
        f"model      {_model_text(job)} on {job.get('device', '-')}",
        f"budget     {_number(budget, suffix=' ms')} (dense model {_number(dense, suffix=' ms')})",
        f"dashboard  {server}/jobs/{job['id']}",
    ]
    if _images_text(job):
        lines.insert(-1, f"images     {_images_text(job)}")
    if job.get("error"):
        lines.append(f"error      {job['error']}")
    models = pareto.get("models") or []
    if not models:
        lines.append("no Pareto models yet" if job["status"] not in FINAL_STATES else "no Pareto models")
        return "\n".join(lines)
    rows = [
        [
            str(model["id"]),
            str(model["trial"]),
            _number(model["predicted_ms"]),
            _number(model.get("measured_ms")),
            _number(model.get("val_top1"), ".1f", "%"),
            _number(model.get("calib_accuracy"), ".1f", "%"),
        ]
        for model in models
    ]
    lines += ["", _table(["model", "trial", "predicted ms", "measured ms", "val top-1", "calib top-1"], rows)]
    lines.append("download one with: vitprune download MODEL_ID [--format bundle|safetensors|config|onnx]")
    return "\n".join(lines)


@_handled
def cmd_jobs(args: argparse.Namespace) -> int:
    with _connect(args) as http:
        if args.id is None:
            params: dict[str, str | int] = {"limit": args.limit}
            if args.status:
                params["status"] = args.status
            jobs = _check(http.get("/api/jobs", params=params)).json()
            print(json.dumps(jobs) if args.json else format_jobs(jobs))
            return 0
        job = _check(http.get(f"/api/jobs/{args.id}")).json()
        pareto = _check(http.get(f"/api/jobs/{args.id}/pareto")).json()
    print(json.dumps({"job": job, "pareto": pareto}) if args.json else format_job(job, pareto, _server(args)))
    return 0


# --- download -----------------------------------------------------------------------------------------------------


def _filename(disposition: str | None, fallback: str) -> str:
    """The file name in a Content-Disposition header; only its last component, so a server cannot pick a folder."""
    name = None
    if disposition:
        encoded = re.search(r"filename\*\s*=\s*[\w-]+''([^;]+)", disposition, re.IGNORECASE)
        plain = re.search(r'filename\s*=\s*"?([^";]+)"?', disposition, re.IGNORECASE)
        name = unquote(encoded.group(1)) if encoded else plain.group(1) if plain else None
    name = re.split(r"[\\/]", name.strip())[-1] if name else ""
    return name if name not in ("", ".", "..") else fallback


def _target(out: str | None, name: str) -> Path:
    """--out as a file, or the server's file name inside --out (an existing folder, or one ending in /) or here."""
    if out is None:
        return Path.cwd() / name
    # Checked on the text: Path() drops the trailing separator that marks a folder still to be created.
    if out.endswith(("/", os.sep)) or Path(out).is_dir():
        Path(out).mkdir(parents=True, exist_ok=True)
        return Path(out) / name
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return Path(out)


def _save(response: httpx.Response, target: Path, expected: str) -> int:
    """Stream the body beside `target`, check its sha256, then rename it into place: no partial or bad file."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    length = response.headers.get("content-length", "")
    bar = tqdm(total=int(length) if length.isdigit() else None, unit="B", unit_scale=True, leave=False, disable=None)
    size = 0
    try:
        with os.fdopen(fd, "wb") as out, bar:
            for chunk in response.iter_bytes(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected:
            raise CommandError(
                f"checksum mismatch: the server announced sha256 {expected} but the file has {digest.hexdigest()}; "
                "the download is corrupt and was not kept, try again"
            )
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a temp file is private; the download gets the user's usual mode
        os.replace(tmp, target)
    except BaseException:
        # BaseException too: an interrupted download must not leave a temp file behind.
        tmp.unlink(missing_ok=True)
        raise
    return size


@_handled
def cmd_download(args: argparse.Namespace) -> int:
    fallback = f"vitprune-model{args.model_id}{FORMATS[args.format]}"
    with (
        _connect(args) as http,
        http.stream("GET", f"/api/models/{args.model_id}/download", params={"format": args.format}) as response,
    ):
        if response.is_error:
            response.read()  # a streamed answer has no body until read; the error detail is in it
            _check(response)
        expected = response.headers.get(CHECKSUM_HEADER, "").strip().lower()
        if not expected:
            raise CommandError(f"the server sent no {CHECKSUM_HEADER} header, so the file cannot be verified")
        target = _target(args.out, _filename(response.headers.get("content-disposition"), fallback))
        size = _save(response, target, expected)
    print(f"saved {target} ({size} bytes, sha256 {expected})")
    return 0


# --- the commands -------------------------------------------------------------------------------------------------


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("service")
    group.add_argument("--server", help=f"the service's URL (default: ${SERVER_ENV}, else {DEFAULT_SERVER})")
    group.add_argument("--token", help=f"API token, sent as a bearer token (default: ${TOKEN_ENV})")


def add_commands(commands: argparse._SubParsersAction) -> None:
    submit = commands.add_parser("submit", help="queue a search job on a vitprune service")
    run = add_job_options(submit)
    run.add_argument("--name", help="a label for the job (default: MODEL on DEVICE)")
    run.add_argument(
        "--upload", action="store_true", help="upload --weights and zip and upload --calib/--val from this machine"
    )
    run.add_argument(
        "--wait",
        action="store_true",
        help="follow the job until it ends; exit 0 only if it is done, printing MODEL_IDS='...' (its Pareto models)",
    )
    run.add_argument("--interval", type=float, default=2.0, help="seconds between progress polls with --wait")
    _add_server_options(submit)
    submit.set_defaults(run=cmd_submit)

    jobs = commands.add_parser("jobs", help="list a vitprune service's jobs, or show one with its Pareto models")
    jobs.add_argument("id", nargs="?", type=int, help="a job id: show this job and its Pareto models")
    jobs.add_argument("--status", choices=JOB_STATES, help="only jobs in this status")
    jobs.add_argument("--limit", type=int, default=100, help="list at most this many jobs")
    jobs.add_argument("--json", action="store_true", help="print the server's JSON")
    _add_server_options(jobs)
    jobs.set_defaults(run=cmd_jobs)

    download = commands.add_parser("download", help="download a pruned model from a vitprune service")
    download.add_argument("model_id", type=int, help="the model's id (see `vitprune jobs JOB_ID`)")
    download.add_argument("--format", choices=tuple(FORMATS), default="bundle", help="what to download")
    download.add_argument("--out", help="file or folder/ to write (default: the server's file name, here)")
    _add_server_options(download)
    download.set_defaults(run=cmd_download)
