"""`pointpeft-ray submit / status / logs / stop`: a job file on a Ray cluster through
the Ray Jobs API (jobs/submission.py; jobs/README.md, "Submitting to a cluster")."""
from __future__ import annotations

import sys
from . import submission

ADDRESS_HELP = ("the Ray dashboard's address, e.g. http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS, "
                "else RAY_ADDRESS, else http://127.0.0.1:8265); with token auth set RAY_AUTH_MODE=token")


def add_cluster_commands(commands) -> None:
    """Add submit, status, logs and stop to the CLI's subcommands."""
    p = commands.add_parser("submit", help="submit a job file to a Ray cluster (Ray Jobs API)")
    p.add_argument("job", help="a job YAML (format: jobs/README.md); checked here before anything is uploaded")
    p.add_argument("--address", default=None, help=ADDRESS_HELP)
    p.add_argument("--working-dir", default=None,
                   help="folder to upload, holding the job file (default: the job's runtime_env.working_dir, "
                        "else the project around the job file: the nearest folder with .git or pyproject.toml)")
    p.add_argument("--submission-id", default=None, help="default: pointpeft-NAME-YYYYmmdd-HHMMSS-xxxx (xxxx: 4 random hex digits)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="also leave out of the upload (gitignore syntax, relative to the working dir; repeatable)")
    wait = p.add_mutually_exclusive_group()
    wait.add_argument("--follow", action="store_true",
                      help="stream the job's logs until it ends; exit 0 if it succeeded, 1 if not")
    wait.add_argument("--no-wait", action="store_true",
                      help="return once submitted (default: wait until the job has started)")
    p.add_argument("--dry-run", action="store_true", help="check the job and show what would be submitted")
    p.set_defaults(func=_run_submit)

    _add_job_command(commands, "status", "status of a submitted job", _run_status)
    p = _add_job_command(commands, "logs", "logs of a submitted job", _run_logs)
    p.add_argument("--follow", action="store_true", help="stream until the job ends; exit 0 if it succeeded, 1 if not")
    _add_job_command(commands, "stop", "stop a submitted job", _run_stop)


def _add_job_command(commands, name: str, help: str, run):
    """A command on one submitted job: its submission id and the cluster's address."""
    p = commands.add_parser(name, help=help)
    p.add_argument("submission_id")
    p.add_argument("--address", default=None, help=ADDRESS_HELP)
    p.set_defaults(func=run)
    return p


def _write(chunk: str) -> None:
    sys.stdout.write(chunk)
    sys.stdout.flush()


def _run_submit(args) -> int:
    plan = submission.plan_submission(args.job, working_dir=args.working_dir, submission_id=args.submission_id,
                                      excludes=args.exclude)
    print(plan.describe(), flush=True)
    if args.dry_run:
        print("  runtime_env: " + str(plan.runtime_env))
        return 0
    client = submission.connect(args.address)
    address = client.get_address()
    sid = submission.submit(client, plan)
    print(f"submitted {sid} to {address}", flush=True)
    how = (f"  follow: pointpeft-ray logs {sid} --follow --address {address}\n"
           f"  status: pointpeft-ray status {sid} --address {address}\n"
           f"  stop:   pointpeft-ray stop {sid} --address {address}")
    if args.no_wait:
        print(how)
        return 0
    if args.follow:
        return _follow(client, sid, f"\n{how}")
    try:
        info = submission.wait_for(client, sid, ("RUNNING", *submission.TERMINAL))
    except KeyboardInterrupt:
        print(f"\npointpeft-ray: stopped waiting; the job is submitted\n{how}", file=sys.stderr)
        return 130
    print(submission.format_status(info))
    print(how)
    return submission.exit_code(info)


def _run_status(args) -> int:
    client = submission.connect(args.address)
    print(submission.format_status(submission.job_info(client, args.submission_id)))
    return 0


def _run_logs(args) -> int:
    client = submission.connect(args.address)
    if args.follow:
        return _follow(client, args.submission_id)
    _write(submission.job_logs(client, args.submission_id))
    return 0


def _follow(client, submission_id: str, hint: str = "") -> int:
    """Stream the job's logs until it ends, then its status; exit code 1 if it failed, 130
    if stopped by Ctrl-C (`hint` follows the message then)."""
    try:
        info = submission.follow_logs(client, submission_id, _write)
    except KeyboardInterrupt:
        print(f"\npointpeft-ray: stopped following; the job goes on{hint}", file=sys.stderr)
        return 130
    print(submission.format_status(info))
    return submission.exit_code(info)


def _run_stop(args) -> int:
    client = submission.connect(args.address)
    info = submission.stop_job(client, args.submission_id)
    print(submission.format_status(info))
    return 0
