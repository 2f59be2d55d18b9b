"""Run records: config, seed, versions and revision next to the results."""
import json

import numpy as np

from structsel import runs


def test_run_writes_record(tmp_path):
    run = runs.Run.create(tmp_path / "w", config={"lr": np.float32(0.5), "sizes": (1, 2)}, seed=7)
    record = json.loads(run.path("config.json").read_text())
    assert record["seed"] == 7 and record["config"] == {"lr": 0.5, "sizes": [1, 2]}
    assert record["versions"]["jax"] and record["versions"]["numpy"] == np.__version__
    assert "git_revision" in record
    run.log_metrics(0, loss=np.array(1.5))
    run.log_metrics(1, loss=1.0)
    lines = [json.loads(s) for s in run.path("metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 0, "loss": 1.5}, {"step": 1, "loss": 1.0}]
    run.write_summary({"best": np.arange(3)})
    assert json.loads(run.path("summary.json").read_text()) == {"best": [0, 1, 2]}
