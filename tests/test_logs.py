"""Messages and levels: the package logs to `pointpeft_ray` loggers; the command line shows
them as plain text (progress on stdout, warnings on stderr), `-q` keeps warnings only."""
import logging

import pytest

from pointpeft_ray.cli import main
from pointpeft_ray.logs import LEVEL_ENV, configure, quiet
from tests.test_train_cli import _tiny_yaml


@pytest.fixture
def console(monkeypatch):
    """The console as the command line sets it up, undone afterwards."""
    monkeypatch.setenv(LEVEL_ENV, "INFO")  # and removed again at the end, as `-q` sets it
    logger = logging.getLogger("pointpeft_ray")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved


def test_progress_goes_to_stdout_and_warnings_to_stderr_as_plain_text(console, monkeypatch, capsys):
    configure()
    log = logging.getLogger("pointpeft_ray.engine.loop")
    log.info("[bank] 60 rows")
    log.warning("[compile] unavailable")
    log.debug("detail")
    assert capsys.readouterr() == ("[bank] 60 rows\n", "[compile] unavailable\n")
    with quiet():
        log.info("a trial's own line")
        log.warning("still shown")
    log.info("back")
    assert capsys.readouterr() == ("back\n", "still shown\n")
    configure()  # once more (a reused Ray worker): still one handler
    log.info("once")
    assert capsys.readouterr().out == "once\n"
    monkeypatch.setenv(LEVEL_ENV, "WARNING")
    configure()
    log.info("hidden")
    assert capsys.readouterr().out == ""


def test_quiet_flag_keeps_the_result_and_drops_the_progress(console, tmp_path, capsys):
    config = _tiny_yaml(tmp_path, epochs=1)
    assert main(["-q", "train", str(config), "--in-process", "--storage", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "best accuracy" in out and "epoch   1" not in out
