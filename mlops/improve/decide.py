"""The promotion decision after the gates: promote, wait for a person, or stop. A plain function of the
policy and the gates' verdicts, so every branch is tested without training anything.

Each `vs: champion` gate carries a paired-bootstrap interval of the difference challenger - champion on the
same held-out rows. Oriented so that positive is better (negated for lower-is-better metrics), an interval is
*better* when it lies above zero, *worse* below zero, and *uncertain* when it straddles zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROMOTE, AWAIT, STOP = "promote", "await_approval", "stop"


@dataclass(frozen=True)
class Decision:
    action: str  # promote | await_approval | stop
    by: str  # who or what decided: gates, policy:<name>
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


def champion_comparisons(verdicts: list[dict[str, Any]], directions: dict[str, str]) -> list[dict[str, Any]]:
    """Each `vs: champion` gate that compared two models: its metric, interval and verdict (better/worse/uncertain).

    `directions` maps a metric name (`auroc`) to `higher` or `lower`.
    """
    out = []
    for v in verdicts:
        c = v.get("comparison")
        if v.get("kind") != "champion" or not c:
            continue
        name = v["metric"].partition("/")[2]
        mcnemar = c.get("test") == "mcnemar"  # decides (and reports) accuracy whatever the gate names
        sign = 1.0 if mcnemar or directions.get(name, "higher") == "higher" else -1.0
        lo, hi = sorted((sign * c["ci"][0], sign * c["ci"][1]))
        verdict = "better" if lo > 0 else "worse" if hi < 0 else "uncertain"
        out.append({"metric": v["metric"], "slice": v.get("slice"), "challenger": c.get("challenger"),
                    "champion": c.get("champion"), "difference": c.get("estimate"), "ci": c["ci"],
                    "p_value": c.get("p_value"), "test": c.get("test"), "verdict": verdict,
                    "direction": "higher" if sign > 0 else "lower"})
    return out


def promotion_decision(policy: str, gates_passed: bool, failures: list[str], verdicts: list[dict[str, Any]],
                       directions: dict[str, str]) -> Decision:
    """What happens to a challenger whose gates were evaluated against the champion."""
    if not gates_passed:
        return Decision(STOP, "gates", "the challenger failed its gates", {"failures": failures})
    comparisons = champion_comparisons(verdicts, directions)
    evidence = {"comparisons": comparisons}
    by = f"policy:{policy}"
    if policy == "auto":
        return Decision(PROMOTE, by, "the gates passed and the policy is auto", evidence)
    if policy == "require_approval":
        return Decision(AWAIT, by, "the gates passed; the policy requires a person's approval", evidence)
    if not comparisons:
        return Decision(AWAIT, by, "the gates passed but no `vs: champion` gate compared it with the champion: "
                        "nothing shows it is better", evidence)
    worse = [c for c in comparisons if c["verdict"] == "worse"]
    if worse:
        return Decision(STOP, by, "not better: " + "; ".join(_describe(c) for c in worse), evidence)
    unsure = [c for c in comparisons if c["verdict"] == "uncertain"]
    if unsure:
        return Decision(AWAIT, by, "uncertain: " + "; ".join(_describe(c) for c in unsure), evidence)
    return Decision(PROMOTE, by, "better: " + "; ".join(_describe(c) for c in comparisons), evidence)


def _describe(c: dict[str, Any]) -> str:
    lo, hi = c["ci"]
    where = f" [{c['slice']}]" if c.get("slice") else ""
    side = {"better": "above", "worse": "below", "uncertain": "across"}[c["verdict"]]
    return (f"{c['metric']}{where} difference {c['difference']:+.4g} [{lo:+.4g}, {hi:+.4g}] lies {side} zero "
            f"({c['direction']} is better)")
