"""Submitting job files to a Ray cluster (pointpeft_ray/jobs/submission.py, `pointpeft-ray
submit / status / logs / stop`).

The first tests need no cluster: what a submission would send (entrypoint, runtime env,
id, upload size) and the errors for a bad job file, a bad address and refused tokens.

The others start a real two-node cluster on this machine with token auth (`ray start
--head` plus `ray start --address`, 1 CPU each, own ports and temp dir), submit a tiny
multi-task job with `pointpeft-ray submit --follow` and with the plain `ray job submit`
CLI, and check that both succeed, that tasks.parquet exists and that the tasks ran on
both nodes. Nothing here calls ray.init in the pytest process: the cluster is only
reached over HTTP and through subprocesses. The fixture stops what it started, by
process group, and checks that nothing started under its temp dir is left.

Loopback only: `ray start` replaces 127.0.0.1 and localhost (in --node-ip-address and
--address) by the machine's routable address, so the nodes use two other loopback
addresses, 127.0.0.2 and 127.0.0.3 (Linux routes all of 127.0.0.0/8 to lo); the
dashboard listens on 127.0.0.1.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from pointpeft_ray import cli
from pointpeft_ray.errors import ConfigError, PointPEFTError
from pointpeft_ray.jobs import JobSpec, submission
from pointpeft_ray.jobs.submission import (auth_error_message, default_submission_id, plan_submission,
                                           resolve_address)

BIN = Path(sys.executable).parent
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
TOKEN_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
TINY_BASE = {"mode": "peft", "model": {"preset": "tiny"},
             "data": {"task": "synth/hardest", "options": {"samples_per_class": 4, "points": 256}},
             "optim": {"epochs": 1, "warmup_epochs": 0, "batch_size": 8}}


def tiny_job(name: str, storage: str, **extra) -> dict:
    """Two tiny fine-tunes in parallel, 1 CPU each: on a cluster of two 1-CPU nodes they
    can only run one per node."""
    return {"name": name, "storage": storage, "report": False, "base": TINY_BASE,
            "multitask": [{"name": "hardest", "task": "synth/hardest"}, {"name": "clean", "task": "synth/clean"}],
            "resources": {"cpus": 1, "gpus": 0, "workers": 1}, **extra}


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- without a cluster ---

def test_plan_of_a_job_in_a_project(tmp_path):
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    job_file = write_yaml(project / "jobs" / "tiny.yaml", tiny_job(
        "tiny", "results", runtime_env={"pip": ["rich==13.7.1"], "env_vars": {"POINTPEFT_CACHE": "/data/cache"}}))
    plan = plan_submission(job_file, excludes=["*.h5"], now=datetime(2026, 1, 2, 3, 4, 5))
    # The project around the job file is uploaded, and the job runs from inside it.
    assert plan.working_dir == project.resolve()
    assert plan.entrypoint == "python -m pointpeft_ray.cli run jobs/tiny.yaml"
    assert re.fullmatch(r"pointpeft-tiny-20260102-030405-[0-9a-f]{4}", plan.submission_id)
    env = plan.runtime_env
    assert env["working_dir"] == str(project.resolve())
    assert env["pip"] == ["rich==13.7.1"] and env["env_vars"] == {"POINTPEFT_CACHE": "/data/cache"}
    # Our excludes, the job's own (relative, local) storage folder, and --exclude.
    for pattern in ("/.git/", "/.venv/", "/runs/", "__pycache__/", ".pytest_cache/", "*.egg-info/", "/results/",
                    "*.h5"):
        assert pattern in env["excludes"], pattern
    assert plan.metadata == {"pointpeft_job": "tiny", "job_file": "jobs/tiny.yaml", "submitted_with": "pointpeft-ray"}
    assert plan.upload_bytes is not None and plan.upload_bytes < 10_000
    assert "rich==13.7.1" in plan.describe()


def test_working_dir_choices(tmp_path):
    loose = write_yaml(tmp_path / "loose" / "job.yaml", tiny_job("loose", "runs"))
    # No .git or pyproject.toml above it: the job file's folder.
    assert plan_submission(loose, measure=False).working_dir == loose.parent.resolve()
    # --working-dir wins; the job file must be inside what is uploaded.
    assert plan_submission(loose, working_dir=tmp_path, measure=False).entrypoint.endswith("run loose/job.yaml")
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(PointPEFTError, match="outside the working dir"):
        plan_submission(loose, working_dir=other, measure=False)
    with pytest.raises(PointPEFTError, match="--working-dir: not a folder"):
        plan_submission(loose, working_dir=tmp_path / "missing", measure=False)
    # The job's runtime_env.working_dir (relative to the job file's folder).
    nested = write_yaml(tmp_path / "a" / "jobs" / "job.yaml",
                        tiny_job("nested", "runs", runtime_env={"working_dir": ".."}))
    plan = plan_submission(nested, measure=False)
    assert plan.working_dir == (tmp_path / "a").resolve() and plan.entrypoint.endswith("run jobs/job.yaml")
    # A working_dir that is not here: `run` (on the cluster, where it was uploaded) reads
    # the job; `submit` (which uploads it) names it.
    remote = write_yaml(tmp_path / "remote" / "job.yaml",
                        tiny_job("remote", "runs", runtime_env={"working_dir": "/nowhere/project"}))
    assert JobSpec.from_yaml(remote).runtime_env.working_dir == "/nowhere/project"
    with pytest.raises(ConfigError, match="runtime_env.working_dir: folder not found: /nowhere/project"):
        plan_submission(remote, measure=False)


def test_a_home_folder_under_git_is_not_a_project(tmp_path, monkeypatch):
    (tmp_path / ".git").mkdir()  # dotfiles
    monkeypatch.setenv("HOME", str(tmp_path))
    job_file = write_yaml(tmp_path / "experiments" / "job.yaml", tiny_job("home", "runs"))
    assert submission.default_working_dir(job_file) == job_file.parent.resolve()


def test_submission_ids():
    when = datetime(2026, 11, 28, 23, 5, 9)
    ids = {default_submission_id("multitask_synth", when) for _ in range(20)}
    # the same job submitted twice within a second must not get the same id
    assert len(ids) > 1
    assert all(re.fullmatch(r"pointpeft-multitask_synth-20261128-230509-[0-9a-f]{4}", sid) for sid in ids)
    assert default_submission_id("x").startswith(f"pointpeft-x-{datetime.now():%Y%m%d}")


def test_submission_id_is_checked(tmp_path):
    job_file = write_yaml(tmp_path / "job.yaml", tiny_job("j", "runs"))
    assert plan_submission(job_file, submission_id="my-run.2", measure=False).submission_id == "my-run.2"
    with pytest.raises(PointPEFTError, match="--submission-id"):
        plan_submission(job_file, submission_id="bad id/../x", measure=False)


def test_upload_size_follows_rays_rules(tmp_path):
    job_file = write_yaml(tmp_path / "job.yaml", tiny_job("j", "runs"))

    def sparse(name: str, size: int) -> None:
        with open(tmp_path / name, "wb") as f:
            f.truncate(size)  # sparse: costs no disk

    sparse("weights.pth", 150 * 1024 ** 2)
    plan = plan_submission(job_file)
    assert any("weights.pth (150.0 MiB) is uploaded" in note for note in plan.notes)
    sparse("huge.bin", 600 * 1024 ** 2)
    with pytest.raises(PointPEFTError, match="Ray takes at most 512.0 MiB.*huge.bin"):
        plan_submission(job_file)
    # What .gitignore, --exclude or our excludes leave out is not counted.
    (tmp_path / ".gitignore").write_text("huge.bin\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "old.ckpt").write_bytes(b"x")
    sparse("runs/big.ckpt", 600 * 1024 ** 2)
    plan = plan_submission(job_file, excludes=["weights.pth"])
    assert plan.notes == [] and plan.upload_bytes < 10_000


def test_a_bad_job_file_fails_before_anything_is_sent(tmp_path, monkeypatch, capsys):
    raw = tiny_job("bad", "runs")
    raw["multitask"][1]["optim"] = {"lr": -1}
    job_file = write_yaml(tmp_path / "bad.yaml", raw)

    def no_connection(*args, **kwargs):
        raise AssertionError("connected to a cluster for a bad job file")

    monkeypatch.setattr(submission, "connect", no_connection)
    assert cli.main(["submit", str(job_file), "--address", f"http://127.0.0.1:{closed_port()}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pointpeft-ray: error: {job_file}: multitask[1].optim: lr:"), err
    with pytest.raises(ConfigError):
        plan_submission(job_file)


@pytest.mark.parametrize("command", [["status", "some-id"], ["logs", "some-id"], ["stop", "some-id"]])
def test_an_unreachable_address_is_named(command, capsys):
    address = f"127.0.0.1:{closed_port()}"
    assert cli.main([*command, "--address", address]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach a Ray dashboard at http://{address}: connection refused" in err
    assert "default port 8265" in err and "Traceback" not in err


def test_the_gcs_port_gets_a_hint(capsys):
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", 6379))
        except OSError:
            pytest.skip("something listens on 6379 here")
    assert cli.main(["status", "x", "--address", "127.0.0.1:6379"]) == 2
    assert "port 6379 is Ray's GCS" in capsys.readouterr().err


def test_address_resolution():
    assert resolve_address(None, {}) == "http://127.0.0.1:8265"
    assert resolve_address("head:8265", {"RAY_ADDRESS": "http://other:1"}) == "http://head:8265"
    assert resolve_address("https://head.example/ray/", {}) == "https://head.example/ray"
    env = {"RAY_ADDRESS": "http://b:8265", "RAY_API_SERVER_ADDRESS": "http://a:8265"}
    assert resolve_address(None, env) == "http://a:8265"
    assert resolve_address(None, {"RAY_ADDRESS": "b:8265"}) == "http://b:8265"
    assert resolve_address(None, {"RAY_ADDRESS": "auto"}) == "http://127.0.0.1:8265"
    with pytest.raises(PointPEFTError, match="dashboard's HTTP address"):
        resolve_address("ray://head:10001", {})


def test_auth_messages_say_where_the_token_comes_from():
    url = "http://head:8265"
    missing = auth_error_message(url, "Authentication required: Unauthorized", {})
    assert "requires a token and none was sent (RAY_AUTH_MODE is not set here)" in missing
    assert "set RAY_AUTH_MODE=token" in missing and "~/.ray/auth_token" in missing and "RAY_AUTH_TOKEN_PATH" in missing
    refused = auth_error_message(url, "Authentication failed: Forbidden",
                                 {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/secrets/ray"})
    assert "refused the token read from /secrets/ray (RAY_AUTH_TOKEN_PATH)" in refused
    refused = auth_error_message(url, "Authentication failed", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "x"})
    assert "read from RAY_AUTH_TOKEN:" in refused and "x" not in refused.split("RAY_AUTH_TOKEN:")[1][:3]
    assert "read from ~/.ray/auth_token" in auth_error_message(url, "Authentication failed",
                                                               {"RAY_AUTH_MODE": "token"})
    unreadable = auth_error_message(url, "RAY_AUTH_TOKEN_PATH is set but file cannot be opened or is empty: /n",
                                    {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/n"})
    assert "RAY_AUTH_TOKEN_PATH names '/n', which cannot be read" in unreadable


def test_cluster_answers_become_clear_errors():
    url = "http://head:8265"
    taken = RuntimeError("Request failed with status code 400: Job with submission_id x already exists. "
                         "Please use a different submission_id.")
    assert "'x' is already taken" in submission._known_error(taken, url, "x", submitting=True)
    unknown = RuntimeError("Request failed with status code 404: Job y does not exist.")
    assert "no job with submission id 'y'" in submission._known_error(unknown, url, "y", submitting=False)
    assert "not as a Ray dashboard" in submission._known_error(RuntimeError("Version check returned 404. x"), url,
                                                               None, submitting=False)
    assert submission._known_error(RuntimeError("something else"), url, "y", submitting=False) is None


def test_dry_run_prints_the_plan(tmp_path, capsys):
    job_file = write_yaml(tmp_path / "job.yaml", tiny_job("dry", "runs"))
    assert cli.main(["submit", str(job_file), "--dry-run", "--submission-id", "dry-1"]) == 0
    out = capsys.readouterr().out
    assert "submission id: dry-1" in out and "entrypoint: python -m pointpeft_ray.cli run job.yaml" in out


# --- a real two-node cluster ---

@dataclass
class Cluster:
    address: str  # the dashboard (Jobs API)
    root: Path  # temp dir: the nodes' temp dirs, the token, the jobs' project and storage
    env: dict  # for clients: token auth on, the token's path, the venv first on PATH
    nodes: dict  # node id -> node IP


def _free_ports(count: int, host: str) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _free_range(size: int, host: str) -> int:
    """The first port of `size` consecutive ports that are free now (for Ray's workers).

    Drawn below the kernel's ephemeral range, so neither the single ports `_free_ports` gets from
    the kernel nor any outgoing connection can land inside it (Ray refuses a node whose worker
    ports overlap another of its ports).
    """
    floor = 11000  # above Ray's fixed defaults (dashboard 8265, client server 10001), which a node still lists
    ceiling = max(_ephemeral_port_floor(), 2 * floor)  # an unusually low ephemeral range: rare collisions
    for _ in range(50):
        start = secrets.randbelow(ceiling - floor - size) + floor
        try:
            _free_ports_at(host, range(start, start + size))
            return start
        except OSError:
            continue
    raise RuntimeError("no free port range")


def _ephemeral_port_floor() -> int:
    """The lowest port the kernel hands out for bind(port 0) and outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _free_ports_at(host: str, ports) -> None:
    sockets = []
    try:
        for port in ports:
            sock = socket.socket()
            sockets.append(sock)
            sock.bind((host, port))
    finally:
        for sock in sockets:
            sock.close()


def _node_args(name: str, ip: str, root: Path, taken: frozenset[int] = frozenset()) -> list[str]:
    """`ray start` options for one node; its ports are distinct from each other and from `taken`,
    since Ray refuses a node whose components share a port number (even on different addresses)."""
    low = _free_range(40, ip)
    taken = taken | set(range(low, low + 40))
    ports = _free_ports(6, ip)
    while taken & set(ports):  # the kernel may hand out a number `taken` holds on another address
        ports = _free_ports(6, ip)
    return ["--node-ip-address", ip, "--num-cpus", "1", "--num-gpus", "0", "--temp-dir", str(root / name),
            "--object-store-memory", str(200 * 1024 ** 2), "--disable-usage-stats",
            "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
            "--dashboard-agent-listen-port", str(ports[2]), "--dashboard-agent-grpc-port", str(ports[3]),
            "--runtime-env-agent-port", str(ports[4]), "--metrics-export-port", str(ports[5]),
            "--min-worker-port", str(low), "--max-worker-port", str(low + 39)]


def _ray_start(args: list[str], env: dict, groups: list[int]) -> None:
    """`ray start ...` as the leader of a new process group; the node's processes stay in it."""
    process = subprocess.Popen([str(BIN / "ray"), "start", *args], env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    groups.append(process.pid)
    try:
        out, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"ray start {' '.join(args[:2])} failed ({process.returncode}):\n{out[-3000:]}")


def _alive_nodes(address: str, token: str) -> dict:
    import requests

    answer = requests.get(f"{address}/api/v0/nodes", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    answer.raise_for_status()
    rows = answer.json()["data"]["result"]["result"]
    return {row["node_id"]: row["node_ip"] for row in rows if row["state"] == "ALIVE"}


def _our_processes(groups: list[int], root: Path) -> list:
    """Processes in the groups we started, or started under our temp dir (their command line
    names it, or they run in it: a job's driver, which Ray starts in a session of its own)."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            in_group = os.getpgid(process.pid) in groups
        except OSError:
            continue
        under_root = str(root) in " ".join(process.info["cmdline"] or []) \
            or (process.info["cwd"] or "").startswith(str(root))
        if in_group or under_root:
            found.append(process)
    return found


def _tear_down(groups: list[int], root: Path) -> list[str]:
    """SIGTERM to our process groups (the worker node first), then SIGKILL to whatever
    is left; returns what survived."""
    import psutil

    for group in reversed(groups):
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            pass
    _, alive = psutil.wait_procs(_our_processes(groups, root), timeout=3)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return [f"{p.pid} {p.name()}" for p in _our_processes(groups, root) if p.is_running()]


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("psutil")
    if not sys.platform.startswith("linux"):
        pytest.skip("two Ray nodes on one machine need Linux (loopback 127.0.0.2/3)")
    if not (BIN / "ray").exists():
        pytest.skip(f"no `ray` next to {sys.executable}")
    for ip in (HEAD_IP, WORKER_IP):
        try:
            _free_ports(1, ip)
        except OSError:
            pytest.skip(f"cannot bind {ip} (loopback alias)")
    # Short: Ray's Unix sockets live under it (a socket path has at most 107 bytes).
    root = Path(tempfile.mkdtemp(prefix="ppr-", dir="/tmp"))
    token_file = root / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    groups: list[int] = []
    start = time.perf_counter()
    try:
        gcs_port, dashboard_port, client_port = _free_ports(3, "127.0.0.1")
        _ray_start(["--head", "--port", str(gcs_port), "--dashboard-host", "127.0.0.1", "--dashboard-port",
                    str(dashboard_port), "--ray-client-server-port", str(client_port),
                    *_node_args("head", HEAD_IP, root, frozenset((gcs_port, dashboard_port, client_port)))],
                   env, groups)
        _ray_start(["--address", f"{HEAD_IP}:{gcs_port}", *_node_args("worker", WORKER_IP, root)], env, groups)
        address = f"http://127.0.0.1:{dashboard_port}"
        token = token_file.read_text()
        nodes: dict = {}
        for _ in range(60):
            nodes = _alive_nodes(address, token)
            if len(nodes) == 2:
                break
            time.sleep(0.5)
        assert sorted(nodes.values()) == [HEAD_IP, WORKER_IP], nodes
        print(f"\n[cluster] two nodes up in {time.perf_counter() - start:.1f} s: {nodes}")
        yield Cluster(address=address, root=root, env=env, nodes=nodes)
    finally:
        stop = time.perf_counter()
        left = _tear_down(groups, root)
        print(f"\n[cluster] stopped in {time.perf_counter() - stop:.1f} s")
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"Ray processes of the test cluster outlived it: {left}"


def _run(cluster: Cluster, args: list[str], env: dict | None = None, timeout: float = 300):
    return subprocess.run(args, env=env or cluster.env, cwd=cluster.root, capture_output=True, text=True,
                          timeout=timeout)


def _pointpeft(cluster: Cluster, *args: str, env: dict | None = None, timeout: float = 300):
    return _run(cluster, [sys.executable, "-m", "pointpeft_ray.cli", *args], env, timeout)


def _task_nodes(cluster: Cluster, job_name: str) -> list[str]:
    """The node (by its IP) each task of the job ran on; the table's `node` column holds
    the Ray node id (or, from older runners, the node's IP)."""
    import pandas as pd

    table = pd.read_parquet(cluster.root / "storage" / job_name / "multitask" / "tasks.parquet")
    assert sorted(table["task"]) == ["clean", "hardest"]
    assert list(table["status"]) == ["completed", "completed"], table[["task", "status", "error"]]
    ips = set(cluster.nodes.values())
    return [cluster.nodes.get(node, node if node in ips else f"unknown:{node}") for node in table["node"]]


def _write_cluster_job(cluster: Cluster, name: str) -> Path:
    return write_yaml(cluster.root / "project" / "jobs" / f"{name}.yaml", tiny_job(
        name, str(cluster.root / "storage"),
        runtime_env={"env_vars": {"POINTPEFT_CACHE": str(cluster.root / "cache")}}))


def test_both_ways_of_submitting_run_on_two_nodes(cluster):
    """`pointpeft-ray submit --follow` and the plain `ray job submit` CLI, at the same time."""
    if not (BIN / "pointpeft-ray").exists():
        pytest.skip("pointpeft-ray is not installed in this environment (pip install -e .)")
    ours = _write_cluster_job(cluster, "cluster_a")
    _write_cluster_job(cluster, "cluster_b")
    (cluster.root / "project" / "pyproject.toml").write_text("[project]\nname = 'cluster-test'\n")
    start = time.perf_counter()
    plain = subprocess.Popen([str(BIN / "ray"), "job", "submit", "--address", cluster.address, "--working-dir",
                              str(cluster.root / "project"), "--submission-id", "plain-ray", "--",
                              "pointpeft-ray", "run", "jobs/cluster_b.yaml"],
                             env=cluster.env, cwd=cluster.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        result = _pointpeft(cluster, "submit", str(ours), "--address", cluster.address, "--follow",
                            "--submission-id", "pp-follow")
        print(f"\n[cluster] pointpeft-ray submit --follow: {time.perf_counter() - start:.1f} s")
        plain_out, _ = plain.communicate(timeout=300)
        print(f"[cluster] ray job submit (at the same time): {time.perf_counter() - start:.1f} s")
    finally:
        if plain.poll() is None:
            plain.kill()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "entrypoint: python -m pointpeft_ray.cli run jobs/cluster_a.yaml" in result.stdout
    assert "pp-follow: SUCCEEDED" in result.stdout
    assert "[job] cluster_a done" in result.stdout  # the job's own output, streamed
    assert plain.returncode == 0 and "[job] cluster_b done" in plain_out, plain_out[-4000:]

    nodes_a, nodes_b = _task_nodes(cluster, "cluster_a"), _task_nodes(cluster, "cluster_b")
    print(f"[cluster] tasks ran on: cluster_a {nodes_a}, cluster_b {nodes_b}")
    assert set(nodes_a + nodes_b) == {HEAD_IP, WORKER_IP}

    status = _pointpeft(cluster, "status", "pp-follow", "--address", cluster.address)
    assert status.returncode == 0 and "pp-follow: SUCCEEDED" in status.stdout, status.stderr
    assert "job: cluster_a (jobs/cluster_a.yaml)" in status.stdout
    logs = _pointpeft(cluster, "logs", "plain-ray", "--follow", "--address", cluster.address)
    assert logs.returncode == 0, logs.stderr
    assert "[job] cluster_b done" in logs.stdout and "plain-ray: SUCCEEDED" in logs.stdout


def test_token_errors_are_clear(cluster):
    wrong = {**cluster.env, "RAY_AUTH_TOKEN": "not-the-token"}  # wins over RAY_AUTH_TOKEN_PATH
    result = _pointpeft(cluster, "status", "pp-follow", "--address", cluster.address, env=wrong)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"the Ray cluster at {cluster.address} refused the token read from RAY_AUTH_TOKEN" in result.stderr
    assert "not-the-token" not in result.stderr
    off = {**cluster.env, "RAY_AUTH_MODE": "disabled"}
    result = _pointpeft(cluster, "status", "pp-follow", "--address", cluster.address, env=off)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "requires a token and none was sent (RAY_AUTH_MODE is 'disabled' here)" in result.stderr
    result = _pointpeft(cluster, "status", "no-such-job", "--address", cluster.address)
    assert result.returncode == 2 and "no job with submission id 'no-such-job'" in result.stderr, result.stderr


def test_submit_waits_for_the_start_then_stop(cluster):
    job_file = _write_cluster_job(cluster, "cluster_c")
    result = _pointpeft(cluster, "submit", str(job_file), "--address", cluster.address, "--submission-id", "pp-stop")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "pp-stop: RUNNING" in result.stdout and "pointpeft-ray logs pp-stop --follow" in result.stdout
    result = _pointpeft(cluster, "stop", "pp-stop", "--address", cluster.address)
    assert result.returncode == 0 and "pp-stop: STOPPED" in result.stdout, result.stdout + result.stderr
