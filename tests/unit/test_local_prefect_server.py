"""The local Prefect server's bookkeeping: its state file, telling a stale record from a running server, and
when nothing is done at all (a server named by the user, the temporary-server opt-out)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlops.core.errors import MlopsError
from mlops.engine import prefect_server as ps


def _state(pid: int, port: int = 4321, home: Path = Path("/tmp/h")) -> ps.ServerState:
    return ps.ServerState(pid=pid, port=port, url=f"http://127.0.0.1:{port}/api", prefect_home=str(home),
                          log=str(home / "mlops-server.log"), started_at=1.5, mlops_version="1", prefect_version="3")


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A live process that is not a Prefect server."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_state_round_trips_through_its_file() -> None:
    state = _state(1234)
    assert ps.ServerState.parse(state.to_json()) == state
    assert state.ui == "http://127.0.0.1:4321"


@pytest.mark.parametrize("text", ["", "{", "[]", '{"pid": 1}', '{"pid": "x", "port": 1, "url": "u", '
                                  '"prefect_home": "h", "log": "l", "started_at": 0, "mlops_version": "1", '
                                  '"prefect_version": "3"}'])
def test_a_broken_state_file_reads_as_none(text: str) -> None:
    assert ps.ServerState.parse(text) is None


def test_stale_records(sleeper: int) -> None:
    assert ps.is_stale(None)
    assert ps.is_stale(_state(_dead_pid()))  # its process is gone
    assert ps.is_stale(_state(sleeper))  # the pid runs something else now
    assert not ps.pid_alive(_dead_pid())
    assert ps.pid_alive(sleeper)


def test_a_process_reaped_between_the_signal_and_the_proc_read_is_gone(sleeper: int,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    read = Path.read_text

    def reaped_meanwhile(self: Path, *args: object, **kwargs: object) -> str:
        if self == Path(f"/proc/{sleeper}/stat"):  # kill(0) found it; its /proc entry is gone by the read
            raise FileNotFoundError(str(self))
        return read(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", reaped_meanwhile)
    assert not ps.pid_alive(sleeper)


def test_a_stale_state_file_is_not_running_and_stop_removes_it(tmp_path: Path) -> None:
    files = ps.server_files(tmp_path)
    files.state.write_text(_state(_dead_pid(), home=tmp_path).to_json())
    assert ps.running(files) is None
    assert ps.stop_server(files) is None  # nothing ran: nothing stopped
    assert not files.state.exists()


def test_a_free_previous_port_is_kept() -> None:
    port = ps._free_port(None)
    assert ps._free_port(port) == port


def test_prefect_home_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert ps.server_files().state == tmp_path / "mlops-server.json"
    monkeypatch.delenv("PREFECT_HOME")
    assert ps.prefect_home() == (Path.home() / ".prefect").resolve()


@pytest.mark.parametrize("env", [{"PREFECT_API_URL": "http://127.0.0.1:9/api"},
                                 {"MLOPS_PREFECT_SERVER": "ephemeral"}])
def test_nothing_starts_when_a_server_is_named_or_the_temporary_one_asked_for(
        env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert ps.ensure_server() is None
    assert not ps.server_files().state.exists()
    assert not ps.server_files().lock.exists()  # not even the start lock was taken


def test_nothing_starts_unasked_when_no_local_server_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without MLOPS_PREFECT_SERVER=local and without a running server (no `mlops server start`), a command keeps
    Prefect's temporary server: no process is left behind that the user did not ask for."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("MLOPS_PREFECT_SERVER", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert ps.ensure_server() is None
    assert not ps.server_files().state.exists()


def test_a_home_that_cannot_be_written_is_refused_in_plain_words(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(MlopsError, match=r"the Prefect home .*a-file/home .* cannot be written: .*PREFECT_HOME"):
        ps.check_home(blocker / "home")
    with pytest.raises(MlopsError, match="cannot be written"):
        ps.start_server(ps.server_files(blocker / "home"))
    assert ps.check_home(tmp_path / "new" / "home").is_dir()  # a missing one is created


@pytest.mark.parametrize(("mode", "says"), [("", "commands use Prefect's temporary server"),
                                            ("local", "the next `mlops run` starts one")])
def test_status_without_a_server_says_what_the_next_command_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], mode: str, says: str) -> None:
    """Without MLOPS_PREFECT_SERVER=local nothing starts a server unasked: status said the next run would."""
    from mlops.cli import main

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv(ps.MODE_ENV, mode)
    assert main(["server", "status"]) == 0
    assert says in capsys.readouterr().out
