"""mlops.serve.fastpath.drive: a coroutine stepped by hand as a Task would step it."""

from __future__ import annotations

import asyncio
from typing import Any

from mlops.serve.fastpath import drive


def test_drive_runs_to_the_first_await_at_once_and_finishes_through_futures_and_bare_yields() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        seen: list[Any] = []

        async def handler() -> int:
            seen.append("started")
            value = await future
            await asyncio.sleep(0)
            seen.append("resumed")
            return value * 2

        drive(handler(), seen.append)
        assert seen == ["started"]  # the first step ran inside drive, before any trip around the loop
        loop.call_soon(future.set_result, 21)
        for _ in range(5):
            await asyncio.sleep(0)
        assert seen == ["started", "resumed", 42]

    asyncio.run(main())


def test_drive_raises_a_failed_future_inside_the_coroutine() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        results: list[Any] = []

        async def handler() -> str:
            try:
                await future
            except ValueError as exc:
                return f"caught {exc}"
            return "not raised"

        drive(handler(), results.append)
        future.set_exception(ValueError("log down"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert results == ["caught log down"]

    asyncio.run(main())
