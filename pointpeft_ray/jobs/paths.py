"""Where a path written in a job file points.

Files the job spec reads while it is validated (`tune.space`, `pretrain.config`) and the
folder `submit` uploads (`runtime_env.working_dir`) are looked up, when relative, in:
1. the job file's folder,
2. the repository root (the checkout that holds the `pointpeft_ray` package), so a job
   can name `search_spaces/cpu_demo.yaml` or `configs/...` from anywhere,
3. the current directory (an installed package has no checkout around it; on a cluster
   the current directory is the uploaded working_dir).
The first place that holds it wins. Paths the runs themselves read (data roots,
checkpoints, storage) are left as written: they are read where the run happens.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from ..errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
Kind = Literal["file", "folder"]


def resolve_reference(written: str, job_dir: Optional[Path], where: str, kind: Kind = "file") -> str:
    """The absolute path `written` refers to; ConfigError naming `where` and the folders
    looked in when there is none."""
    exists = Path.is_file if kind == "file" else Path.is_dir
    path = Path(written).expanduser()
    if path.is_absolute():
        if exists(path):
            return str(path)
        raise ConfigError(f"{where}: {kind} not found: {written}")
    folders = ([Path(job_dir)] if job_dir is not None else []) + [REPO_ROOT, Path.cwd()]
    for folder in folders:
        candidate = folder / path
        if exists(candidate):
            return str(candidate.resolve())
    looked = ", ".join(str(f) for f in dict.fromkeys(folders))
    raise ConfigError(f"{where}: {kind} not found: {written} (looked in {looked})")
