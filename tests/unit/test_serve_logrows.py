"""The served requests' log rows built by the commit that writes them (mlops.serve.logrows): several requests
built in one pass give the rows each would have got alone; a group that fails to build fails only its own
requests; the loop's commit and the log thread both write deferred rows. Real ONNX Runtime, Pillow, tokenizers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import pytest

from mlops.core.predlog import LoopCommits, PredictionLog, built_rows, prediction_rows, read_predictions
from mlops.package.predictor import DESCRIPTORS, EMBEDDING, Predictor
from mlops.serve.logrows import PendingPrediction
from tests.media_fixtures import IMAGE, build_media_bundle, instance


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return Predictor(build_media_bundle(tmp_path_factory.mktemp("media") / "bundle"), threads=1)


def pending(predictor: Predictor, seeds: list[int], tag: str) -> PendingPrediction:
    texts = ["great coffee, fresh and strong", "stale chips", "my dog loves these treats"]
    feeds = predictor.feeds_from_rows([instance(s, texts[s % 3], 30.0 + s) for s in seeds])
    prediction = predictor.predict(feeds)
    ids = [f"{tag}-{i}" for i in range(len(seeds))]
    return PendingPrediction(predictor, ids, "media", "3", "champion", feeds, prediction, 1.5)


def without_time(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [row[:1] + row[2:] for row in rows]


def test_a_group_builds_the_rows_each_request_gets_alone(predictor: Predictor) -> None:
    items = [pending(predictor, [0], "a"), pending(predictor, [1, 2], "b"), pending(predictor, [3, 4, 5], "c")]
    together = PendingPrediction.build(items)
    alone = [PendingPrediction.build([item])[0] for item in items]
    assert [len(rows) for rows in together] == [1, 2, 3]
    assert [without_time(r) for r in together] == [without_time(r) for r in alone]
    first = json.loads(together[2][1][5])  # the inputs of request c's second row: its own image and text
    assert "sha1" in first[IMAGE] and first[DESCRIPTORS]
    assert all(EMBEDDING in json.loads(row[6]) for rows in together for row in rows)
    assert len({json.loads(row[5])[DESCRIPTORS].__repr__() for rows in together for row in rows}) == 6


class Broken:
    """Deferred rows whose building fails (a bug): only its own requests may fail."""

    def group_key(self) -> Hashable:
        return "broken"

    @classmethod
    def build(cls, items: Sequence[Any]) -> list[list[tuple[Any, ...]]]:
        raise RuntimeError("cannot build")


def test_a_group_that_fails_to_build_fails_only_its_requests(predictor: Predictor) -> None:
    ok = pending(predictor, [0], "ok")
    built = built_rows([[("x",)], Broken(), ok, Broken()])
    assert built[0] == [("x",)]
    assert isinstance(built[1], RuntimeError) and built[3] is built[1]
    assert isinstance(built[2], list) and len(built[2]) == 1


def test_the_loop_commit_and_the_log_thread_write_deferred_rows(predictor: Predictor, tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "log.sqlite")
    commits = LoopCommits(log)

    async def requests() -> list[Any]:
        writes = [commits.write("predictions", pending(predictor, [k, k + 1], f"loop{k}")) for k in range(4)]
        return await asyncio.gather(*writes, commits.write("predictions", Broken()), return_exceptions=True)

    results = asyncio.run(requests())
    assert results[:4] == [None] * 4 and isinstance(results[4], RuntimeError)
    log.submit("predictions", pending(predictor, [9], "thread")).result(timeout=10)
    log.close()
    commits.close()
    rows = {r["id"]: r for r in read_predictions(tmp_path / "log.sqlite")}
    assert set(rows) == {f"loop{k}-{i}" for k in range(4) for i in range(2)} | {"thread-0"}
    assert all(DESCRIPTORS in json.loads(row["inputs"]) for row in rows.values())


def test_the_loop_commit_waits_one_more_trip_for_the_next_requests(predictor: Predictor, tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "log.sqlite")
    commits = LoopCommits(log)
    groups: list[int] = []
    commit = commits._commit

    def counted() -> None:
        groups.append(len(commits._group or ()))
        commit()

    commits._commit = counted  # type: ignore[method-assign]

    async def requests() -> None:
        first = asyncio.ensure_future(commits.write("predictions", pending(predictor, [0], "first")))
        await asyncio.sleep(0)  # the first request's write opens the group in this trip
        second = asyncio.ensure_future(commits.write("predictions", pending(predictor, [1], "second")))
        await asyncio.gather(first, second)  # the second writes in the next trip: the same commit
        await commits.write("predictions", pending(predictor, [2], "alone"))  # a lone write still commits

    asyncio.run(requests())
    commits.close()
    log.close()
    assert groups == [2, 1]
    assert {r["id"] for r in read_predictions(tmp_path / "log.sqlite")} == {"first-0", "second-0", "alone-0"}


def test_a_row_sqlite_cannot_bind_fails_its_group_and_the_writers_go_on(tmp_path: Path) -> None:
    """A str that is no UTF-8 (a lone surrogate) or an int past 64 bits, should one ever reach the log: its group
    answers with the error (503), and the next requests commit, on the loop and on the log thread alike. Before,
    the error escaped the commit: the loop's group waited for good and the log thread died."""
    log = PredictionLog(tmp_path / "log.sqlite")
    commits = LoopCommits(log)
    bad = [prediction_rows(["s"], "m", None, "champion", [{}], [{}], 1.0)[0][:2] + ("m\ud800",)
           + prediction_rows(["s"], "m", None, "champion", [{}], [{}], 1.0)[0][3:],
           ("big", 1.0, "m", None, "champion", "{}", "{}", 10**30)]

    async def requests(row: tuple[Any, ...], tag: str) -> list[Any]:
        return await asyncio.gather(commits.write("predictions", [row]),
                                    commits.write("predictions", prediction_rows([tag], "m", None, "champion",
                                                                                 [{}], [{}], 1.0)),
                                    return_exceptions=True)

    for n, row in enumerate(bad):
        grouped = asyncio.run(asyncio.wait_for(requests(row, f"with-bad-{n}"), timeout=30))
        assert all(isinstance(r, ValueError | OverflowError) for r in grouped), grouped  # the group failed
        with pytest.raises((ValueError, OverflowError)):
            log.submit("predictions", [row]).result(timeout=30)
        asyncio.run(asyncio.wait_for(commits.write("predictions", prediction_rows([f"loop-{n}"], "m", None,
                                                                                  "champion", [{}], [{}], 1.0)),
                                     timeout=30))
        log.submit("predictions", prediction_rows([f"thread-{n}"], "m", None, "champion", [{}], [{}], 1.0)
                   ).result(timeout=30)
    log.close()
    commits.close()
    assert {r["id"] for r in read_predictions(tmp_path / "log.sqlite")} == {"loop-0", "thread-0", "loop-1",
                                                                            "thread-1"}
