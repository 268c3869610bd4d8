"""`--log` takes a path or a URL: a plain path or sqlite:/// stays the embedded SQLite log, postgresql:// goes to
PostgreSQL, and any other URL is refused, never taken for a path (it once became a folder named `postgresql:`)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mlops.core.errors import MlopsError
from mlops.core.predlog import LogReader, PredictionLog
from mlops.core.predlog_pg import redacted
from mlops.core.predlog_store import (
    is_log_url,
    log_exists,
    log_name,
    log_store,
    log_target,
    open_idempotent_log,
    open_log,
    open_reader,
    record_feedback,
)


@pytest.mark.parametrize(("target", "expected"), [
    ("preds.sqlite", ("sqlite", Path("preds.sqlite"))),
    ("/abs/dir/preds.sqlite", ("sqlite", Path("/abs/dir/preds.sqlite"))),
    (Path("rel/preds.sqlite"), ("sqlite", Path("rel/preds.sqlite"))),
    ("sqlite:///rel/preds.sqlite", ("sqlite", Path("rel/preds.sqlite"))),
    ("sqlite:////abs/preds.sqlite", ("sqlite", Path("/abs/preds.sqlite"))),
    ("SQLite:////abs/preds.sqlite", ("sqlite", Path("/abs/preds.sqlite"))),
    ("C:/logs/preds.sqlite", ("sqlite", Path("C:/logs/preds.sqlite"))),  # a drive letter, not a scheme
    ("postgresql://mlops@db:5432/logs", ("postgresql", "postgresql://mlops@db:5432/logs")),
    ("postgres://db/logs", ("postgresql", "postgres://db/logs")),
])
def test_a_target_names_its_store(target: str | Path, expected: tuple[str, object]) -> None:
    assert log_store(target) == expected


@pytest.mark.parametrize(("target", "message"), [
    ("ftp://x", r"unknown scheme 'ftp://'.*postgresql://"),
    ("kafka://broker:9092/t", "unknown scheme 'kafka://'"),
    ("postgres:/typo", "a URL takes 'postgres://'"),
    ("postgresql:host/db", None),  # no slash: a relative path whose name holds a colon, as before
    (Path("postgresql://db/logs"), "a URL takes 'postgresql://'"),  # squashed by Path(): refused, not a folder
    ("sqlite://", "expected sqlite:///PATH"),
    ("sqlite://host/x.sqlite", "expected sqlite:///PATH"),
    ("sqlite:///", "expected sqlite:///PATH"),
])
def test_other_urls_are_refused_never_taken_for_a_path(target: str | Path, message: str | None,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    if message is None:
        assert log_store(target)[0] == "sqlite"
        return
    for opener in (open_log, open_reader):
        with pytest.raises(MlopsError, match=message):
            opener(target)
    assert list(tmp_path.iterdir()) == []  # nothing created on the way


def test_sqlite_targets_open_the_sqlite_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for target, file in ((f"sqlite:///{tmp_path}/a.sqlite", tmp_path / "a.sqlite"),
                         ("sqlite:///b/b.sqlite", tmp_path / "b" / "b.sqlite"),
                         (str(tmp_path / "c.sqlite"), tmp_path / "c.sqlite")):
        log = open_log(target)
        try:
            assert isinstance(log, PredictionLog)
            log.submit("feedback", [("i", 1.0, "a", None, "{}")]).result(timeout=10)
        finally:
            log.close()
        assert file.is_file()
        with open_reader(target) as reader:
            assert isinstance(reader, LogReader)
            assert reader.latest_feedback(["i"])["i"]["label"] == "a"


def test_a_sqlite_log_that_cannot_be_written_is_refused_naming_it(tmp_path: Path) -> None:
    """`mlops serve --log`, `mlops collect --log`, `mlops stream --log`: a directory, a device, a path under a
    file, a file that is not SQLite, another program's database: an MlopsError naming it, not sqlite3's error."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "bundle.json").write_text('{"format": "mlops-bundle/1"}\n')
    other = sqlite3.connect(tmp_path / "mlflow.db")
    other.execute("CREATE TABLE runs (id TEXT)")
    other.commit()
    other.close()
    cases = [(tmp_path / "dir", "prediction log .*dir: is a directory"),
             (Path("/dev/null"), "prediction log /dev/null: is not a regular file"),
             (tmp_path / "bundle.json" / "log.sqlite", "bundle.json is a file, not a directory"),
             (tmp_path / "bundle.json", "bundle.json is not a prediction log: file is not a database"),
             (tmp_path / "mlflow.db", r"mlflow.db is not a prediction log: it is a database with other tables \(runs\)")]
    for path, message in cases:
        with pytest.raises(MlopsError, match=message):
            open_log(path).close()
        with pytest.raises(MlopsError, match=message):
            open_idempotent_log(path).close()
    assert (tmp_path / "bundle.json").read_text() == '{"format": "mlops-bundle/1"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle.json", "dir", "mlflow.db"]
    db = sqlite3.connect(tmp_path / "mlflow.db")
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["runs"]
    db.close()


def test_feedback_needs_an_existing_sqlite_log(tmp_path: Path) -> None:
    with pytest.raises(MlopsError, match="no prediction log at"):
        record_feedback(f"sqlite:///{tmp_path}/missing.sqlite", [("i", 1.0, "a", None, "{}")])
    assert list(tmp_path.iterdir()) == []


def test_a_target_is_carried_as_a_url_or_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = "postgresql://mlops@db:5432/logs"
    assert log_target(url) == url and is_log_url(url)
    assert log_target("sqlite:///x.sqlite") == Path("x.sqlite") and not is_log_url("x.sqlite")
    assert log_target("x.sqlite", resolve=True) == tmp_path.resolve() / "x.sqlite"
    with pytest.raises(MlopsError):
        log_target("ftp://x")
    assert not log_exists("x.sqlite") and log_exists(url)
    (tmp_path / "x.sqlite").touch()
    assert log_exists("x.sqlite") and log_exists("sqlite:///x.sqlite")


def test_messages_never_show_a_password() -> None:
    assert log_name("postgresql://mlops:s3cret@db:5433/logs") == "postgresql://mlops:***@db:5433/logs"
    assert log_name("postgresql://mlops@db/logs") == "postgresql://mlops@db/logs"
    assert log_name("postgresql://db/logs?user=mlops&password=s3cret") == "postgresql://db/logs?user=mlops&password=***"
    assert log_name(Path("x/preds.sqlite")) == "x/preds.sqlite"


def test_the_sqlite_log_does_not_import_the_postgresql_driver() -> None:
    code = ("import sys; from mlops.core.predlog_store import open_log, open_reader; import mlops.serve.app; "
            "assert 'psycopg2' not in sys.modules, 'psycopg2 imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:s3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgresql://u:s3cret@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
    ("redis://:s3cret@h:99999/0", "redis://:***@h:99999/0"),  # a port out of range: urlsplit's port raises
    ("redis://:s3cret@h:abc/0", "redis://:***@h:abc/0"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
    # a password in the query (libpq's password= and sslpassword=, redis-py's password=): masked, the rest as written
    ("postgresql://u@h:5432/db?password=s3cret&sslmode=require", "postgresql://u@h:5432/db?password=***&sslmode=require"),
    ("postgresql://u@h/db?sslmode=verify-full&sslpassword=s%2Fcret&connect_timeout=5",
     "postgresql://u@h/db?sslmode=verify-full&sslpassword=***&connect_timeout=5"),
    ("postgresql://u:s3cret@h:abc/db?PASSWORD=x", "postgresql://u:***@h:abc/db?PASSWORD=***"),
    ("postgresql://u@h/db?passfile=/home/u/.pgpass&password=", "postgresql://u@h/db?passfile=/home/u/.pgpass&password="),
    ("redis://cache:6379/0?password=s3cret&stream=a+b", "redis://cache:6379/0?password=***&stream=a+b"),
    ("rediss://user@cache:99999/2?stream=x&password=s3cret", "rediss://user@cache:99999/2?stream=x&password=***"),
])
def test_a_url_in_a_message_keeps_its_port_as_written_and_never_its_password(url: str, shown: str) -> None:
    assert redacted(url) == shown


def test_a_refused_postgresql_log_does_not_show_the_password_of_its_query() -> None:
    """A real refusal (nothing listens on port 1): its message names the log, without the password."""
    with pytest.raises(MlopsError, match=r"cannot open the prediction log postgresql://postgres@127\.0\.0\.1:1/test"
                                         r"\?password=\*\*\*&sslmode=disable: ") as err:
        open_log("postgresql://postgres@127.0.0.1:1/test?password=s3cret&sslmode=disable")
    assert "s3cret" not in str(err.value)
