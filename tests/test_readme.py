"""Every command line of the README still works: each ``python -m xilsweep.run``
line (and each ``make run ARGS=...``) runs on the tiny settings, a sweep with
its own overrides, and the report reads the sweep it made."""

from __future__ import annotations

import re
import shlex

import pytest

from helpers import REPO, TINY, run_xilsweep
from xilsweep.results.report import main as report_main

README = (REPO / "README.md").read_text()
RUN = re.compile(r"^(?:\.venv/bin/)?python -m xilsweep\.run(?P<args>.*)$")
MAKE_RUN = re.compile(r'^make run ARGS="(?P<args>[^"]*)"$')
# From the README's code blocks: the arguments of every xilsweep.run command.
COMMANDS = [
    shlex.split(match.group("args"))
    for block in re.findall(r"```bash\n(.*?)```", README, re.S)
    for line in block.splitlines()
    for match in [RUN.match(line.split("  #")[0].strip()) or MAKE_RUN.match(line.split("  #")[0].strip())]
    if match
]


def test_the_readme_has_its_commands():
    assert len(COMMANDS) >= 3
    assert any("-m" in args for args in COMMANDS)  # the first sweep


@pytest.fixture(scope="module")
def ran() -> dict:
    """The folder each distinct command ran in: the README gives some commands twice (as
    ``python -m xilsweep.run`` and as ``make run``), and the same arguments run once."""
    return {}


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(args) for args in COMMANDS])
def test_every_readme_command_runs_on_tiny_settings(args, data_root, tmp_path, ran, capsys, plots_not_rendered):
    folder = ran.get(tuple(args))
    if folder is None:
        folder = tmp_path
        # one seed and the in-process launcher keep the README's sweep to seconds; its spelling is kept
        kept = [a for a in args if not a.startswith(("seed=", "hydra/launcher="))]
        where = f"hydra.sweep.dir={folder / 'sweep'}" if "-m" in args else f"hydra.run.dir={folder / 'job'}"
        result = run_xilsweep([*kept, *TINY, f"data.root={data_root}", where], folder)
        assert result.returncode == 0, result.stderr[-2000:]
        ran[tuple(args)] = folder
    if "-m" in args:
        assert report_main([str(folder / "sweep")]) == 0  # python -m xilsweep.report FOLDER
        assert "## Does the model still rely on the confounder?" in capsys.readouterr().out
    else:
        assert (folder / "job" / "metrics.json").exists()
