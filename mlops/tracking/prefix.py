"""Ids as people type them: any unique prefix of a full id (the 12 characters `mlops runs` shows, or fewer)."""

from __future__ import annotations

from mlops.core.errors import MlopsError

SHOWN = 12  # how many characters of an id the tables show
LISTED = 10  # how many candidates an ambiguous prefix's error lists


def unique_prefix(prefix: str, candidates: dict[str, str], what: str, where: str) -> str:
    """The one id in `candidates` (id -> what to show beside it) that is `prefix` or starts with it.

    None matching is an error naming `where` was searched; several is an error listing them."""
    if prefix in candidates:
        return prefix
    matches = sorted(c for c in candidates if prefix and c.startswith(prefix))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise MlopsError(f"no {what} '{prefix}' in {where}")
    shown = [f"  {m}  {candidates[m]}" for m in matches[:LISTED]]
    more = [f"  ... and {len(matches) - LISTED} more"] if len(matches) > LISTED else []
    raise MlopsError("\n".join([f"{what} '{prefix}' is ambiguous: {len(matches)} {what}s in {where} start with "
                                "it; give more of the id:", *shown, *more]))
