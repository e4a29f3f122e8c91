"""The user guide holds: its runnable commands run, its spec examples are valid specs, its
mistake tables are refused with the messages they quote, its links lead somewhere, and
docs/reference.md is what the generator writes.

Markers, in README.md and docs/*.md:
  ```bash runnable     a shell block run here (bash -eo pipefail, in a fresh folder, with the
                       venv's rhmscale first on PATH): tiny sizes, CPU, seconds;
  ```yaml sweep-spec   a complete sweep spec: parsed and its grid expanded;
  ```yaml study-spec   a complete study spec: parsed and checked as `tune submit` checks it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rhmscale.errors import UserError
from rhmscale.sweeps.grid import expand_points
from rhmscale.sweeps.spec import load_spec, parse_spec
from rhmscale.tuning import reference
from rhmscale.tuning.checks import check_search
from rhmscale.tuning.spec import parse_study_spec

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)


def blocks(info: str) -> list[tuple[str, int, str]]:
    """(page, line, text) of every fenced block whose info string is `info`."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(1).strip() == info:
                line = text.count("\n", 0, match.start()) + 1
                found.append((page.relative_to(ROOT).as_posix(), line, match.group(2)))
    return found


def ids(found: list[tuple[str, int, str]]) -> list[str]:
    return [f"{page}:{line}" for page, line, _ in found]


RUNNABLE = blocks("bash runnable")
SWEEP_SPECS = blocks("yaml sweep-spec")
STUDY_SPECS = blocks("yaml study-spec")


def test_the_markers_are_used():
    assert len(RUNNABLE) >= 3 and len(SWEEP_SPECS) >= 3 and len(STUDY_SPECS) >= 2


def test_readme_starts_with_the_two_commands():
    first = (ROOT / "README.md").read_text().splitlines()[:4]
    assert first[0] == "```" and first[1].startswith("make demo ")
    assert first[2].startswith("make test ") and first[3] == "```"
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndemo:" in makefile and "\ntest:" in makefile and "sweep submit quick" in makefile
    runs = len(expand_points(load_spec("quick")).points)
    assert f"`quick` sweep ({runs} CPU runs" in first[1], f"the quick preset has {runs} runs"
    # The first hour: how to get the `rhmscale` command, and where the demo's sweep is.
    after = " ".join((ROOT / "README.md").read_text().splitlines()[4:7])
    assert "source .venv/bin/activate" in after and "demo-runs/quick" in after
    assert "DEMO_ROOT ?= demo-runs" in makefile


def runnable_params() -> list:
    """The runnable blocks; one that trains a sweep (the in-process debug executor, 10-15 s on
    2 cores; the CPU recipe of docs/sweep-spec.md, minutes) is slow."""
    return [
        pytest.param(*block, marks=[pytest.mark.slow] if "sweep submit" in block[2] else [])
        for block in RUNNABLE
    ]


@pytest.mark.parametrize("page, line, text", runnable_params(), ids=ids(RUNNABLE))
def test_runnable_block(page, line, text, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.update(WANDB_MODE="disabled", COLUMNS="120")
    done = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", text],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{page}:{line} failed:\n{text}\n{done.stdout}\n{done.stderr}"


@pytest.mark.parametrize("page, line, text", SWEEP_SPECS, ids=ids(SWEEP_SPECS))
def test_sweep_spec_example(page, line, text):
    spec = parse_spec(yaml.safe_load(text), f"{page}:{line}")
    assert expand_points(spec).points


@pytest.mark.parametrize("page, line, text", STUDY_SPECS, ids=ids(STUDY_SPECS))
def test_study_spec_example(page, line, text):
    spec = parse_study_spec(yaml.safe_load(text), f"{page}:{line}")
    assert check_search(spec)


def mistakes(page: str) -> list[tuple[str, str]]:
    """(YAML fragment, quoted message) of each row of a page's "Mistakes" table."""
    text = (ROOT / "docs" / page).read_text()
    table = text[text.index("## Mistakes") :]
    rows = re.findall(r"^\| `([^`]+)`[^|]*\| `([^`]+)` \|", table, re.M)
    assert rows, f"docs/{page} has no mistakes table"
    return rows


def refusal(parse, example: str, fragment: str) -> str:
    tree = {**yaml.safe_load(example), **yaml.safe_load(fragment)}
    with pytest.raises(UserError) as error:
        parse(tree)
    return str(error.value)


@pytest.mark.parametrize("fragment, message", mistakes("sweep-spec.md"))
def test_sweep_spec_mistake(fragment, message):
    def parse(tree):
        expand_points(parse_spec(tree))

    assert message in refusal(parse, SWEEP_SPECS[0][2], fragment)


@pytest.mark.parametrize("fragment, message", mistakes("study-spec.md"))
def test_study_spec_mistake(fragment, message):
    def parse(tree):
        check_search(parse_study_spec(tree))

    assert message in refusal(parse, STUDY_SPECS[0][2], fragment)


def test_reference_is_generated():
    assert (ROOT / "docs" / "reference.md").read_text() == reference.render(), (
        "docs/reference.md is out of date: run python -m rhmscale.tuning.reference --write"
    )


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
# A path in backticks must exist, unless the text says a command writes it ("writes `...`").
PATH = re.compile(r"(?<!writes )`((?:bench|rhmscale|tests|results|slurm|docs)/[\w./-]+)`")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_links_and_paths_exist(page):
    text = page.read_text()
    missing = [
        target
        for target in LINK.findall(text)
        if "://" not in target and not (page.parent / target).exists()
    ]
    if page.name != "CHANGELOG.md":  # history may name what a past commit had
        missing += [p for p in PATH.findall(text) if not (ROOT / p.rstrip(".")).exists()]
    assert not missing, f"{page.name} names files that are not in the repository: {missing}"
