"""The library's progress lines: `say()` prints each once, on whatever stdout is now (so `--json` keeps stdout
for the JSON object), and the runner hands the `mlops` logger to Prefect's run logs without a second console
handler."""

from __future__ import annotations

import logging
import os

import pytest

from mlops.cli.output import emit, json_mode
from mlops.core.log import LOGGER_NAME, say


def test_json_mode_keeps_stdout_for_the_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    with json_mode(True):
        say("step train: done")
        emit({"run_id": "r1"})
    out, err = capsys.readouterr()
    assert out == '{"run_id": "r1"}\n'
    assert err == "mlops: step train: done\n"
    say("step gate: done")  # and back on stdout afterwards, once
    assert capsys.readouterr().out == "mlops: step gate: done\n"


def test_the_mlops_logger_joins_prefects_extra_loggers_and_prints_once(monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PREFECT_LOGGING_EXTRA_LOGGERS", "mylib")
    from mlops.engine.runner import configure_prefect, log_to_runs

    configure_prefect()
    assert os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] == f"mylib,{LOGGER_NAME}"  # the user's kept
    configure_prefect()
    assert os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] == f"mylib,{LOGGER_NAME}"  # once
    log_to_runs()
    log_to_runs()
    from prefect.logging.handlers import APILogHandler

    handlers = logging.getLogger(LOGGER_NAME).handlers
    assert sum(isinstance(h, APILogHandler) for h in handlers) == 1
    # Prefect's console handler prints a record that reaches it: none may, or each line would print twice
    assert not any(type(h).__name__ == "PrefectConsoleHandler" for h in handlers)
    assert not logging.getLogger(LOGGER_NAME).propagate
    say("outside any flow run: no warning, one line")
    out, err = capsys.readouterr()
    assert out == "mlops: outside any flow run: no warning, one line\n" and "flow run id" not in err
