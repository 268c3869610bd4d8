"""Compare and reproduce: `mlops runs`, `mlops diff`, `mlops reproduce` on real tracked runs."""

from __future__ import annotations

import json

import pytest

from tests.conftest import last_json, run_cli

pytestmark = pytest.mark.e2e


def test_runs_diff_and_reproduce(isolated_env: dict[str, str]) -> None:
    a = last_json(run_cli(["run", "--json", "recipes/churn_csv.yaml", "trainer.max_epochs=3"], isolated_env))
    b = last_json(run_cli(["run", "--json", "recipes/churn_csv.yaml", "trainer.max_epochs=3", "model.lr=0.01"],
                          isolated_env))

    rows = last_json(run_cli(["runs", "--json", "recipes/churn_csv.yaml", "--sort", "test/auroc"], isolated_env))
    assert {r["run_id"] for r in rows} == {a["run_id"], b["run_id"]}
    assert all(set(r["differs"]) == {"model.lr"} for r in rows)  # the only param that differs
    aurocs = [r["metrics"]["test/auroc"] for r in rows]
    assert aurocs == sorted(aurocs, reverse=True)
    for args, said in ((["--sort", "test/aurc"], "--sort test/aurc: none of the 2 runs listed has this metric (did "
                                                 "you mean 'test/auroc'?"),
                       (["--metric", "test/acc"], "--metric test/acc: none of the 2 runs listed has this metric (did "
                                                  "you mean 'test/accuracy'?"),
                       (["--limit", "0"], "--limit 0: expected a number of runs from 1 to 50000")):
        typo = run_cli(["runs", "recipes/churn_csv.yaml", *args], isolated_env)  # a column of dashes, a traceback
        assert typo.returncode == 2 and typo.stderr.startswith(f"error: {said}"), typo.stderr

    diff = last_json(run_cli(["diff", "--json", a["run_id"], b["run_id"]], isolated_env))
    config = {(d["section"], d["key"]): (d["a"], d["b"]) for d in diff}
    assert config[("config", "model.lr")] == ("0.001", "0.01")
    assert config[("overrides", "overrides")] == ("trainer.max_epochs=3", "trainer.max_epochs=3 model.lr=0.01")
    assert not any(d["section"] in ("data", "packages", "seeds") for d in diff)

    proc = run_cli(["reproduce", "--json", a["run_id"]], isolated_env)
    result = last_json(proc)
    assert result["match"], json.dumps(result["mismatches"], indent=1)
    bundle = json.loads(open(f"{a['bundle']}/bundle.json").read())
    assert result["onnx_sha256"] == bundle["onnx_sha256"]
    assert result["metrics"]["test/auroc"] == a["metrics"]["test/auroc"]


def test_diff_of_unknown_run_is_a_clear_error(isolated_env: dict[str, str]) -> None:
    proc = run_cli(["diff", "0" * 32, "1" * 32], isolated_env)
    assert proc.returncode == 2 and "no run '00000000000000000000000000000000'" in proc.stderr
    assert "Traceback" not in proc.stderr
