"""A resumable step (train) works in a stable directory that outlives a killed process, and the cache publishes
its result only once the step returned: a half-trained model is never visible as a cached result."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from pydantic import BaseModel

from mlops.engine.cache import Cache, _exclusive


class Trained(BaseModel):
    epochs: int


# a train step that writes its first epoch's checkpoint, then dies by SIGKILL as `kill -9` would kill it
_KILLED = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from pydantic import BaseModel
    from mlops.engine.cache import Cache

    class Trained(BaseModel):
        epochs: int

    def train(out: Path) -> Trained:
        (out / "last.ckpt").write_text("epoch 1")
        (out / "model.pt").write_text("half-trained")
        os.kill(os.getpid(), signal.SIGKILL)
        return Trained(epochs=1)

    Cache(Path(sys.argv[1])).compute("train", "k1", train)
""")


def test_killed_train_step_is_never_published_and_resumes(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-c", _KILLED, str(root)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    cache = Cache(root)
    assert not cache.has("train", "k1")
    assert not cache.path("train", "k1").exists()  # no half-trained result under the key
    work = cache.resumable("train", "k1")
    assert work == cache.work_dir("train", "k1") and (work / "last.ckpt").read_text() == "epoch 1"

    seen: list[str] = []

    def resume(out: Path) -> Trained:
        seen.append((out / "last.ckpt").read_text())  # the killed attempt's checkpoint is there to resume from
        (out / "model.pt").write_text("trained")
        return Trained(epochs=3)

    output = cache.compute("train", "k1", resume)
    assert seen == ["epoch 1"]
    assert output.result == Trained(epochs=3) and output.dir == cache.path("train", "k1")
    assert (output.dir / "model.pt").read_text() == "trained"
    assert not cache.work_dir("train", "k1").exists()
    assert cache.resumable("train", "k1") is None  # published: nothing left to resume


def test_a_failing_train_step_keeps_its_work_but_publishes_nothing(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")

    def crash(out: Path) -> Trained:
        (out / "last.ckpt").write_text("epoch 2")
        raise RuntimeError("out of memory")

    try:
        cache.compute("train", "k2", crash)
    except RuntimeError:
        pass
    assert not cache.has("train", "k2") and not cache.path("train", "k2").exists()
    assert cache.resumable("train", "k2") is not None


def test_a_live_run_work_dir_is_not_shared(tmp_path: Path) -> None:
    """While a live run holds the key's lock, nobody resumes from its directory: a second run trains apart."""
    cache = Cache(tmp_path / "cache")
    work = cache.work_dir("train", "k3")
    work.mkdir(parents=True)
    (work / "last.ckpt").write_text("live")
    with _exclusive(work) as held:
        assert held
        assert cache.resumable("train", "k3") is None
        output = cache.compute("train", "k3", lambda out: Trained(epochs=int(not (out / "last.ckpt").exists())))
    assert output.result.epochs == 1  # it did not see the live run's checkpoint
    assert (work / "last.ckpt").read_text() == "live"


def test_other_steps_leave_nothing_behind_when_they_fail(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")

    def crash(out: Path) -> Trained:
        (out / "part.parquet").write_text("half")
        raise RuntimeError("boom")

    try:
        cache.compute("preprocess", "k4", crash)
    except RuntimeError:
        pass
    assert list((tmp_path / "cache" / "preprocess").iterdir()) == []
    assert cache.resumable("preprocess", "k4") is None
