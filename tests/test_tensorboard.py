"""A tiny parallel sweep as a user sees it: its console lines, and TensorBoard's own server
(started here, queried through its HTTP API, as the browser's dashboards query it)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

from helpers import job_folders, job_metrics, run_sweep
from xilsweep.metrics import REFERENCE_KINDS, RELIANCE
from xilsweep.progress import PLANNED_FILE
from xilsweep.tracking import reference_tag

# seed varies and pretrain.seed follows it: TensorBoard sorts by name, and both come after most constants
SWEEP = ["seed=0,1", "pretrain.seed=${seed}", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2"]


@pytest.fixture(scope="module")
def sweep(data_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tensorboard") / "sweep"
    result = run_sweep(SWEEP, folder, data_root)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, result.stdout + result.stderr


@pytest.fixture(scope="module")
def server(sweep):
    """``GET``/``POST`` on a TensorBoard server over the sweep folder, once it serves every job's last scalar."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(sweep[0]), "--host", "127.0.0.1"]
    process = subprocess.Popen([*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def query(path: str, body: dict | None = None, **args):
        url = f"http://127.0.0.1:{port}/data/{path}?{urllib.parse.urlencode(args)}"
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "X-XSRF-Protected": "1"}
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=10) as response:
            return json.loads(response.read())

    runs = [folder.name for folder in job_folders(sweep[0])]
    deadline = time.monotonic() + 60
    while True:
        try:
            if all(query("plugin/scalars/scalars", run=run, tag="Final/test_accuracy") for run in runs):
                break
        except (urllib.error.URLError, ConnectionError):
            pass  # starting, or the run not loaded yet
        assert process.poll() is None and time.monotonic() < deadline, "TensorBoard did not serve the sweep"
        time.sleep(0.5)
    yield query
    process.terminate()
    process.wait(timeout=10)


def test_hparams_lists_the_varied_settings_first_and_the_final_metrics(server):
    experiment = server("plugin/hparams/experiment", {"experimentName": "", "hparamsLimit": 1000})
    names = [info["name"] for info in experiment["hparamInfos"]]
    # TensorBoard's own order (differing first, then by name); its table shows the first five
    assert names[:2] == ["pretrain_seed", "seed"] and {"lr", "loss", "lam", "pool_size"} < set(names)
    assert [info["name"] for info in experiment["hparamInfos"] if info["differs"]] == names[:2]
    metrics = [info["name"]["tag"] for info in experiment["metricInfos"]]
    assert metrics[:3] == ["Final/test_accuracy", "Final/dot_flip_rate", "Final/shortcut_removed_dot_flip_rate"]
    assert all(tag.startswith("Final/") for tag in metrics)


def test_floor_and_ceiling_are_lines_over_every_epoch(server, sweep):
    layout = server("plugin/custom_scalars/layout")
    [test, validation] = layout["category"]
    assert "test subset of 300" in test["title"] and "validation images" in validation["title"]
    charted = [tag for chart in test["chart"] for tag in chart["multiline"]["tag"]]
    for record, folder in zip(job_metrics(sweep[0]), job_folders(sweep[0]), strict=True):
        epochs = list(range(record["epochs_run"] + 1))
        for tag in (reference_tag(kind, f.key) for kind in REFERENCE_KINDS for f in RELIANCE):
            assert tag in charted
            assert [step for _, step, _ in server("plugin/scalars/scalars", run=folder.name, tag=tag)] == epochs, tag


def test_console_names_each_job_its_images_and_the_report(sweep):
    folder, output = sweep
    lines = output.splitlines()
    names = {job.name for job in job_folders(folder)}
    from_jobs = [line for line in lines if "][xilsweep" in line]  # the jobs' lines, from joblib's workers
    assert from_jobs and all(re.match(r"\[[^]]+\]\[([^]]+)\]", line)[1] in names for line in from_jobs)
    epoch_lines = [line for line in from_jobs if "] - epoch " in line]
    assert epoch_lines and all("validation: loss" in line and "; test subset of 300: " in line for line in epoch_lines)
    assert sum("ran all 2 epochs, kept epoch" in line for line in from_jobs) == 2
    assert lines[-1].endswith(f"report: python -m xilsweep.report {folder}")
    # the sweep's own records write overrides as they were given, not escaped or resolved
    planned = yaml.safe_load((folder / PLANNED_FILE).read_text())
    assert all("pretrain.seed=${seed}" in job["overrides"] for job in planned["jobs"])
    assert planned["varied"] == ["seed", "pretrain.seed"]
    assert all("pretrain.seed=${seed}" in record["overrides"] for record in job_metrics(folder))
