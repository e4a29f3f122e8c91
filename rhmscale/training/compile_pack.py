"""The compile helper's program (`python -m rhmscale.training.compile_pack <pack.json>`): build a
pack as its trainer does, compiled (not graphed), and take one step, which fills torch's compile
caches for the pack's own trainer (compile_ahead.py says why and starts this process).

It sits above trainer.py, which imports compile_ahead.py's handle: so the imports run one way,
compile_pack -> trainer -> compile_ahead.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from rhmscale.config import RunConfig
from rhmscale.rhm.data import make_datasets
from rhmscale.store.folders import RunDir
from rhmscale.training.fabric import make_fabric
from rhmscale.training.member import Member
from rhmscale.training.trainer import Trainer


def compile_pack(configs: list[RunConfig], slots: int) -> None:
    """Build the pack as its trainer does, compiled (not graphed), and take one step."""
    compiled = [c.model_copy(update={"train": c.train.model_copy(update={"compile": "default"})})
                for c in configs]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        members = [
            Member(c, make_datasets(c), RunDir(Path(tmp) / str(i))) for i, c in enumerate(compiled)
        ]
        Trainer(members, make_fabric(compiled[0]), slots=slots, room=1).advance()


if __name__ == "__main__":
    pack = json.loads(Path(sys.argv[1]).read_text())
    compile_pack([RunConfig.model_validate(c) for c in pack["configs"]], pack["slots"])
