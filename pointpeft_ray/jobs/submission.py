"""Submitting a job file to a Ray cluster through the Ray Jobs API, and following it.

`pointpeft-ray submit JOB.yaml --address http://HEAD:8265` checks the job file here first
(JobSpec.from_yaml: a bad file fails before anything is uploaded), then hands Ray:
- the entrypoint `python -m pointpeft_ray.cli run JOB` (JOB relative to the working
  dir). It works whether the cluster has pointpeft-ray pip-installed or only gets the
  package through the uploaded working dir (the entrypoint's current directory, first
  on its sys.path). `python` is the cluster's: the one on the PATH `ray start` ran with;
- the runtime env: the job's `runtime_env` (pip, env_vars) and the working dir, uploaded
  without what a cluster never needs (UPLOAD_EXCLUDES, the job's local storage folder;
  Ray also leaves out .git, .venv, venv, __pycache__ and what .gitignore / .rayignore name);
- a readable submission id, `pointpeft-NAME-YYYYmmdd-HHMMSS-xxxx` (or the caller's).

The working dir is `--working-dir`, else the job's `runtime_env.working_dir`, else the
project the job file lives in: the nearest folder above it holding `.git` or
`pyproject.toml` (for jobs/*.yaml in a checkout: the repository), else the job file's
folder. The job file must be inside it (it travels with the upload).

Address: `--address`, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, else
http://127.0.0.1:8265: the dashboard's HTTP address (`HOST:PORT` means http://HOST:PORT).

Token auth (Ray >= 2.52): with RAY_AUTH_MODE=token, Ray's client sends the token from
RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH names, else ~/.ray/auth_token. Like
Ray's own CLI, nothing is sent to an explicit address unless RAY_AUTH_MODE=token is set.
A refused token, an unreachable address or an unknown submission id is a PointPEFTError
that says what to check.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shlex
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Optional, Sequence

from ..errors import ConfigError, PointPEFTError
from ..results.storage import is_uri
if TYPE_CHECKING:  # the spec loads torch; status, logs and stop need neither
    from .spec import JobSpec

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")  # read in this order, as Ray's job CLI does
TOKEN_FILE = Path("~/.ray/auth_token")
# Left out of every upload (gitignore patterns, relative to the working dir), on top of
# Ray's own defaults (.git, .venv, venv, __pycache__) and .gitignore / .rayignore.
UPLOAD_EXCLUDES = ("/.git/", "/.venv/", "/venv/", "/runs/", "__pycache__/", "*.pyc", ".pytest_cache/",
                   ".mypy_cache/", ".ruff_cache/", ".ipynb_checkpoints/", "/.cache/", "*.egg-info/",
                   "/build/", "/dist/")
# Ray keeps a working dir package in the GCS, which takes at most 512 MiB (gRPC's limit).
UPLOAD_LIMIT = 512 * 1024 ** 2
LARGE_FILE = 100 * 1024 ** 2  # named in a warning: does the cluster need it?
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
SUBMISSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
PROJECT_MARKERS = (".git", "pyproject.toml")
CONNECT_TIMEOUT = 10.0  # seconds to wait for the dashboard to answer at all


@dataclass(frozen=True)
class Submission:
    """What `submit` hands the Ray Jobs API for one job file."""

    job: "JobSpec"
    job_file: Path  # absolute
    working_dir: Path  # absolute: uploaded
    entrypoint: str
    runtime_env: dict
    submission_id: str
    metadata: dict[str, str]
    upload_bytes: Optional[int] = None  # what the upload holds, unpacked (None: not measured)
    notes: list[str] = field(default_factory=list)  # warnings for the user

    def describe(self) -> str:
        size = "" if self.upload_bytes is None else f" ({_size(self.upload_bytes)})"
        lines = [f"job {self.job.name} ({self.job_file})", f"  submission id: {self.submission_id}",
                 f"  entrypoint: {self.entrypoint}", f"  working dir: {self.working_dir}{size}"]
        env = {key: value for key, value in self.runtime_env.items() if key not in ("working_dir", "excludes")}
        if env:
            lines.append(f"  runtime env: {env}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


# --- the plan: no cluster needed ---

def plan_submission(job_file: str | Path, working_dir: str | Path | None = None,
                    submission_id: str | None = None, excludes: Sequence[str] = (),
                    now: datetime | None = None, measure: bool = True) -> Submission:
    """Check `job_file` and work out what to submit; nothing is sent anywhere."""
    path = Path(job_file).expanduser()
    from .spec import JobSpec

    job = JobSpec.from_yaml(path)  # ConfigError naming the file and the place in it
    path = path.resolve()
    folder = _working_dir(job, path, working_dir)
    if not path.is_relative_to(folder):
        raise PointPEFTError(f"{path}: the job file is outside the working dir {folder}, which is what gets "
                             "uploaded; put it inside, or pass --working-dir with a folder that holds it")
    relative = path.relative_to(folder)
    all_excludes = list(dict.fromkeys([*UPLOAD_EXCLUDES, *_storage_exclude(job, folder), *excludes]))
    runtime_env = {**job.runtime_env.to_ray(), "working_dir": str(folder), "excludes": all_excludes}
    notes = _outside_references(job, folder)
    upload = _measure_upload(folder, all_excludes) if measure else None
    if upload is not None:
        total, large = upload
        notes += [f"{name} ({_size(size)}) is uploaded with the job; if the cluster does not need it, "
                  "add it to .rayignore or pass --exclude" for name, size in large]
        if total > UPLOAD_LIMIT:
            raise PointPEFTError(
                f"the working dir {folder} holds {_size(total)} to upload; Ray takes at most {_size(UPLOAD_LIMIT)}. "
                "Leave out what the cluster does not need (a .rayignore file, or --exclude PATTERN) "
                "and keep data and checkpoints where the cluster can read them"
                + (f"; largest: {', '.join(f'{n} ({_size(s)})' for n, s in large[:5])}" if large else ""))
    sid = submission_id or default_submission_id(job.name, now)
    if not SUBMISSION_ID.match(sid):
        raise PointPEFTError(f"--submission-id {sid!r}: use letters, digits and _.- (at most 128, "
                             "starting with a letter or digit)")
    entrypoint = f"python -m pointpeft_ray.cli run {shlex.quote(relative.as_posix())}"
    metadata = {"pointpeft_job": job.name, "job_file": relative.as_posix(), "submitted_with": "pointpeft-ray"}
    return Submission(job=job, job_file=path, working_dir=folder, entrypoint=entrypoint, runtime_env=runtime_env,
                      submission_id=sid, metadata=metadata, notes=notes,
                      upload_bytes=None if upload is None else upload[0])


def default_submission_id(job_name: str, now: datetime | None = None) -> str:
    """`pointpeft-NAME-YYYYmmdd-HHMMSS-xxxx` (local time, 4 random hex digits: the same job
    submitted twice within a second gets two ids, not "id already taken")."""
    return f"pointpeft-{job_name}-{(now or datetime.now()):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def default_working_dir(job_file: str | Path) -> Path:
    """The project a job file lives in: the nearest folder at or above the file's folder
    that holds .git or pyproject.toml, else the file's folder. The home folder and the
    filesystem root are never a project (a dotfiles repository is not one)."""
    folder = Path(job_file).expanduser().resolve().parent
    never = {Path.home().resolve(), Path(folder.anchor)}
    for candidate in (folder, *folder.parents):
        if candidate in never:
            break
        if any((candidate / marker).exists() for marker in PROJECT_MARKERS):
            return candidate
    return folder


def _working_dir(job: JobSpec, job_file: Path, given: str | Path | None) -> Path:
    if given is not None:
        folder = Path(given).expanduser().resolve()
        if not folder.is_dir():
            raise PointPEFTError(f"--working-dir: not a folder: {given}")
        return folder
    if job.runtime_env.working_dir:  # resolved by JobSpec.from_yaml when it was found
        folder = Path(job.runtime_env.working_dir)
        if not folder.is_dir():
            raise ConfigError(f"{job_file}: runtime_env.working_dir: folder not found: {folder} "
                              f"(relative paths: from {job_file.parent}, the repository root or the current folder)")
        return folder.resolve()
    return default_working_dir(job_file)


def _storage_exclude(job: JobSpec, folder: Path) -> list[str]:
    """The job's storage folder when it is local and inside the working dir: old results
    are not uploaded (a relative storage is relative to where the job runs)."""
    if is_uri(job.storage):
        return []
    storage = (folder / Path(job.storage).expanduser()).resolve()  # an absolute storage stays itself
    if storage == folder or not storage.is_relative_to(folder):
        return []
    return [f"/{storage.relative_to(folder).as_posix()}/"]


def _outside_references(job: JobSpec, folder: Path) -> list[str]:
    """Files the job reads that the upload will not hold."""
    references = {"tune.space": job.tune.space if job.tune else None,
                  "pretrain.config": job.pretrain.config if job.pretrain else None}
    outside = [(where, path) for where, path in references.items()
               if path is not None and not Path(path).resolve().is_relative_to(folder)]
    return [f"{where}: {path} is outside the working dir, so it is not uploaded; the cluster must have it at that path"
            for where, path in outside]


def _measure_upload(folder: Path, excludes: Sequence[str]) -> Optional[tuple[int, list[tuple[str, int]]]]:
    """(bytes Ray would upload, [(file, bytes) of the large ones, largest first]), walked
    with Ray's own rules (its default excludes, ours, .gitignore, .rayignore); None when
    Ray's packaging helpers are not importable."""
    try:
        from ray._private import ray_constants
        from ray._private.runtime_env.packaging import _dir_travel, _get_excludes
    except ImportError:
        return None
    include_gitignore = os.environ.get(ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"
    patterns = [*ray_constants.get_runtime_env_default_excludes(), *excludes]
    sizes: dict[str, int] = {}

    def add(path: Path) -> None:
        if path.is_file() and not path.is_symlink():
            sizes[path.relative_to(folder).as_posix()] = path.stat().st_size

    _dir_travel(folder, [_get_excludes(folder, patterns)], add, include_gitignore=include_gitignore,
                logger=logging.getLogger(__name__))
    large = sorted(((name, size) for name, size in sizes.items() if size >= LARGE_FILE), key=lambda item: -item[1])
    return sum(sizes.values()), large


# --- talking to the cluster ---

def resolve_address(address: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The dashboard's HTTP address: `address`, else RAY_API_SERVER_ADDRESS, else
    RAY_ADDRESS, else http://127.0.0.1:8265. `HOST:PORT` means http://HOST:PORT."""
    environ = os.environ if environ is None else environ
    # "auto" and "local" mean something to ray.init only.
    from_environment = (environ[name] for name in ADDRESS_VARIABLES
                        if environ.get(name, "auto") not in ("auto", "local"))
    chosen = address or next(from_environment, DEFAULT_ADDRESS)
    chosen = chosen.strip().rstrip("/")
    scheme, sep, rest = chosen.partition("://")
    if not sep:
        return f"http://{chosen}"
    if scheme not in ("http", "https"):
        raise PointPEFTError(f"address {chosen!r}: give the Ray dashboard's HTTP address, e.g. http://HEAD:8265 "
                             f"(the Jobs API is served there, not at {scheme}://)")
    if not rest:
        raise PointPEFTError(f"address {chosen!r}: no host")
    return chosen


def connect(address: str | None = None):
    """A JobSubmissionClient for the cluster at `address` (see resolve_address); the
    cluster's answer to a first request is checked (reachable, a Ray dashboard, the token)."""
    url = resolve_address(address)
    _check_reachable(url)
    from ray.job_submission import JobSubmissionClient

    with _cluster_errors(url), _without_address_variables():
        # Ray's client lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override the address it
        # is given; here the address was chosen above, variables included.
        return JobSubmissionClient(url)


def submit(client, plan: Submission) -> str:
    """Upload the working dir and start the job; returns its submission id."""
    with _cluster_errors(client.get_address(), plan.submission_id, submitting=True):
        return client.submit_job(entrypoint=plan.entrypoint, runtime_env=plan.runtime_env,
                                 submission_id=plan.submission_id, metadata=plan.metadata)


def job_info(client, submission_id: str):
    """Ray's JobDetails of the job (status, message, times, entrypoint)."""
    with _cluster_errors(client.get_address(), submission_id):
        return client.get_job_info(submission_id)


def job_logs(client, submission_id: str) -> str:
    with _cluster_errors(client.get_address(), submission_id):
        return client.get_job_logs(submission_id)


def stop_job(client, submission_id: str, wait_seconds: float = 15.0):
    """Ask the job to stop; returns its JobDetails once it has ended (or after
    `wait_seconds`, whatever its status then)."""
    with _cluster_errors(client.get_address(), submission_id):
        client.stop_job(submission_id)
    return wait_for(client, submission_id, TERMINAL, wait_seconds)


def wait_for(client, submission_id: str, statuses: Sequence[str], timeout: float | None = None,
             poll: float = 0.5):
    """JobDetails once the job's status is one of `statuses` (or after `timeout` seconds)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        info = job_info(client, submission_id)
        if _status(info) in statuses or (deadline is not None and time.monotonic() >= deadline):
            return info
        time.sleep(poll)


def follow_logs(client, submission_id: str, write: Callable[[str], None]):
    """Stream the job's logs to `write` until the job ends; returns its final JobDetails."""
    address = client.get_address()
    job_info(client, submission_id)  # an unknown id fails here, clearly

    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            write(chunk)

    with _cluster_errors(address, submission_id):
        asyncio.run(tail())
    # The log stream closes as the job ends; its status follows within moments.
    return wait_for(client, submission_id, TERMINAL, timeout=30.0)


def format_status(info) -> str:
    """A few lines on a job: id, status, message, times, entrypoint."""
    status = _status(info)
    lines = [f"{info.submission_id}: {status}"]
    if info.message:
        lines.append(f"  message: {info.message.strip()}")
    started, ended = _time(info.start_time), _time(info.end_time)
    if started:
        took = f" ({(info.end_time - info.start_time) / 1000:.0f} s)" if info.end_time and info.start_time else ""
        lines.append(f"  started: {started}" + (f", ended: {ended}{took}" if ended else ""))
    if info.entrypoint:
        lines.append(f"  entrypoint: {info.entrypoint}")
    job_name = (info.metadata or {}).get("pointpeft_job")
    if job_name:
        lines.append(f"  job: {job_name} ({(info.metadata or {}).get('job_file', '?')})")
    if getattr(info, "error_type", None):
        lines.append(f"  error type: {info.error_type}")
    return "\n".join(lines)


def exit_code(info) -> int:
    """0 when the job succeeded, 1 when it failed or was stopped, 0 while it runs."""
    return 1 if _status(info) in ("FAILED", "STOPPED") else 0


def _status(info) -> str:
    status = info.status
    return getattr(status, "value", str(status))


def _time(milliseconds: Optional[int]) -> Optional[str]:
    return datetime.fromtimestamp(milliseconds / 1000).strftime("%Y-%m-%d %H:%M:%S") if milliseconds else None


def _size(size: int) -> str:
    return f"{size / 1024 ** 2:.1f} MiB" if size < 1024 ** 3 else f"{size / 1024 ** 3:.2f} GiB"


# --- errors ---

def _check_reachable(url: str) -> None:
    """Any HTTP answer from the address will do (an auth refusal is handled later); no
    answer is a PointPEFTError naming the address. A short timeout: Ray's client has none."""
    import requests

    try:
        requests.get(f"{url}/api/version", timeout=(CONNECT_TIMEOUT, 30.0))
    except requests.exceptions.RequestException as err:
        raise PointPEFTError(_unreachable(url, _reason(err))) from None


def _unreachable(url: str, reason: str) -> str:
    hint = ""
    port = re.search(r":(\d+)$", url.split("://", 1)[-1].split("/", 1)[0])
    if port and port.group(1) in ("6379", "10001"):
        hint = (f" (port {port.group(1)} is Ray's GCS / client port; the Jobs API is served by the dashboard, "
                "port 8265 unless `ray start --dashboard-port` says otherwise)")
    return (f"cannot reach a Ray dashboard at {url}: {reason}{hint}. Check the address (--address, "
            "RAY_API_SERVER_ADDRESS or RAY_ADDRESS) and that the head node's dashboard listens there "
            "(default port 8265; `ray start --head --dashboard-host 0.0.0.0` to reach it from another machine)")


def _reason(err: BaseException) -> str:
    text = str(err)
    for marker in ("Connection refused", "Name or service not known", "Temporary failure in name resolution",
                   "No route to host", "Network is unreachable", "timed out"):
        if marker in text:
            return marker.lower()
    return type(err).__name__


@contextlib.contextmanager
def _without_address_variables() -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in ADDRESS_VARIABLES if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def _cluster_errors(url: str, submission_id: str | None = None, submitting: bool = False) -> Iterator[None]:
    """Ray's client errors as PointPEFTErrors that say what to check."""
    from ray.exceptions import AuthenticationError, RayError

    try:
        yield
    except AuthenticationError as err:
        raise PointPEFTError(auth_error_message(url, str(err))) from None
    except ConnectionError as err:  # Ray's client: "Failed to connect to Ray at address: ..."
        raise PointPEFTError(_unreachable(url, "connection failed")) from err
    except Exception as err:
        message = _known_error(err, url, submission_id, submitting)
        if message is None and isinstance(err, (RuntimeError, RayError)):
            # Ray's client reports the cluster's other refusals (and failed uploads) so.
            message = f"the Ray cluster at {url}: {err}"
        if message is None:
            raise
        raise PointPEFTError(message) from None


def _known_error(err: Exception, url: str, submission_id: str | None, submitting: bool) -> Optional[str]:
    import requests

    text = str(err)
    status = getattr(err, "status", None)  # aiohttp's handshake error (log tail)
    if isinstance(err, requests.exceptions.RequestException) or type(err).__name__ in (
            "ClientConnectorError", "ServerDisconnectedError"):
        return _unreachable(url, _reason(err))
    if status in (401, 403):
        return auth_error_message(url, "Authentication required" if status == 401 else "Authentication failed")
    if "Version check returned 404" in text:
        return (f"{url} answers, but not as a Ray dashboard (no /api/version); give the dashboard's address, "
                "e.g. http://HEAD:8265")
    if submission_id and (status == 404 or ("404" in text and "does not exist" in text)):
        return (f"no job with submission id {submission_id!r} on the cluster at {url} "
                "(`ray job list --address ...` lists them)")
    if submitting and submission_id and "already" in text.lower():
        return (f"submission id {submission_id!r} is already taken on the cluster at {url}; "
                "pass another with --submission-id")
    return None


def auth_error_message(url: str, ray_message: str, environ: Mapping[str, str] | None = None) -> str:
    """What to do about a refused (or missing) token, naming where the token is read from."""
    environ = os.environ if environ is None else environ
    mode = environ.get("RAY_AUTH_MODE")
    where = ("RAY_AUTH_TOKEN (the variable), else the file RAY_AUTH_TOKEN_PATH names, else ~/.ray/auth_token; "
             "the first that is set wins")
    path = environ.get("RAY_AUTH_TOKEN_PATH")
    if "RAY_AUTH_TOKEN_PATH is set but" in ray_message or "cannot be opened" in ray_message:
        return (f"RAY_AUTH_TOKEN_PATH names {path!r}, which cannot be read or is empty; point it at the file "
                f"holding the cluster's token, or unset it (tokens are read from {where})")
    if mode != "token" or "Authentication required" in ray_message or "no authentication token" in ray_message:
        state = f"RAY_AUTH_MODE is {mode!r} here" if mode else "RAY_AUTH_MODE is not set here"
        return (f"the Ray cluster at {url} requires a token and none was sent ({state}): set RAY_AUTH_MODE=token "
                f"and provide the cluster's token, read from {where} (on the head node `ray get-auth-token` "
                "prints it)")
    return (f"the Ray cluster at {url} refused the token read from {_token_source(environ)}: it is not the "
            f"cluster's token. Tokens are read from {where}")


def _token_source(environ: Mapping[str, str]) -> str:
    if environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"{environ['RAY_AUTH_TOKEN_PATH']} (RAY_AUTH_TOKEN_PATH)"
    return str(TOKEN_FILE)
