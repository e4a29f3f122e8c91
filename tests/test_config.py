import pytest

from rhmscale.config import valid_keys
from rhmscale.config_io import build_config, check_keys, parse_override, validate_config
from rhmscale.errors import UserError


def test_overrides_parse_yaml_values():
    cfg = build_config({}, ["grammar.v=32", "grammar.m=4", "model.time_cond=true", "train.lr=3e-4"])
    assert (cfg.grammar.v, cfg.grammar.m, cfg.model.time_cond, cfg.train.lr) == (32, 4, True, 3e-4)


def test_unknown_key_names_nearest_valid_key():
    with pytest.raises(UserError, match="did you mean 'grammar.v'"):
        build_config({}, ["grammar.vv=3"])
    with pytest.raises(UserError, match="did you mean 'train.max_steps'"):
        check_keys({"train": {"max_step": 3}})


def test_impossible_grammar_and_too_large_P_are_user_errors():
    with pytest.raises(UserError, match=r"m=5 is larger than v\*\*\(s-1\)=4"):
        build_config({}, ["grammar.v=4", "grammar.m=5"])
    # v=2, m=1, L=2: 2 distinct sequences only.
    with pytest.raises(UserError, match="exceeds the 2 distinct sequences"):
        build_config({}, ["grammar.v=2", "grammar.m=1", "grammar.L=2", "data.P=2", "data.n_test=1"])
    with pytest.raises(UserError, match="data.P"):
        build_config({}, ["data.P=0"])
    with pytest.raises(UserError, match="model.arch"):
        build_config({}, ["model.arch=lstm"])


def test_bad_override_syntax():
    with pytest.raises(UserError, match="key=value"):
        parse_override("grammar.v")


def test_run_id_ignores_tracking_and_changes_with_science():
    a = build_config({}, [])
    b = build_config({}, ["tracking.wandb=disabled", "tracking.group=x"])
    c = build_config({}, ["data.P=4095"])
    assert a.run_id() == b.run_id() != c.run_id()
    assert len(a.run_id()) == 12


def test_counts_and_keys():
    cfg = build_config({}, ["grammar.v=32", "grammar.m=8", "grammar.L=4"])
    assert cfg.grammar.n_sequences == 32 * 8**15
    assert "grammar.v" in valid_keys() and "tracking.wandb" in valid_keys()


def test_the_config_refuses_what_the_models_cannot_build():
    # Checked once, where the value enters (the models trust a validated config).
    with pytest.raises(UserError, match="divisible"):
        build_config({}, ["model.arch=transformer", "model.width=30", "model.heads=4"])
    with pytest.raises(UserError, match="'linear' or 'cosine'"):
        build_config({}, ["diffusion.schedule=quadratic"])
    with pytest.raises(UserError, match="'transformer' or 'tree_unet'"):
        build_config({}, ["model.arch=mlp"])


def test_every_derivation_follows_the_role_a_field_declares():
    from pydantic import Field

    from rhmscale.config import (
        BOOKKEEPING,
        SCIENCE,
        SEED,
        RunConfig,
        TrainConfig,
        cell_columns,
        cell_of,
        key_roles,
        member_keys,
        pack_key,
        run_id,
        setting,
    )

    class Train(TrainConfig):
        label_smoothing: float = setting(0.0, SCIENCE)
        log_every: int = setting(50, BOOKKEEPING)
        init_seed: int = setting(0, SEED, per_member=True)

    class Run(RunConfig):
        train: Train = Field(default_factory=Train)

    base = Run()

    def with_(**train):
        return Run(train=Train(**train))

    smooth, logged, seeded = with_(label_smoothing=0.1), with_(log_every=10), with_(init_seed=3)
    # science: in the run id, the cell, the fit's cell columns; shared within a pack
    assert run_id(smooth) != run_id(base)
    assert cell_of(smooth)["train.label_smoothing"] == 0.1
    assert pack_key(smooth) != pack_key(base)
    # bookkeeping: in none of them (but a pack still shares it)
    assert run_id(logged) == run_id(base) and "train.log_every" not in cell_of(base)
    # a per-member seed: in the run id, not the cell, and members of a pack may differ in it
    assert run_id(seeded) != run_id(base) and "train.init_seed" not in cell_of(base)
    assert pack_key(seeded) == pack_key(base) and "train.init_seed" in member_keys(Run)
    columns = [
        "run_id",
        "train.label_smoothing",
        "train.log_every",
        "train.init_seed",
        "gen/acc_l1",
    ]
    assert cell_columns(columns, Run) == ["train.label_smoothing"]
    assert key_roles(Run)["train.label_smoothing"].role == SCIENCE

    class Unlabelled(TrainConfig):
        forgotten: int = 0

    class Bad(RunConfig):
        train: Unlabelled = Field(default_factory=Unlabelled)

    with pytest.raises(TypeError, match="forgotten"):
        key_roles(Bad)


def test_the_same_run_on_cpu_and_gpu_has_one_run_id():
    cpu = build_config({}, ["train.device=cpu", "train.precision=32", "train.compile=off"])
    gpu = build_config({}, ["train.device=cuda", "train.precision=bf16", "train.compile=auto"])
    assert cpu.run_id() == gpu.run_id()
    assert build_config({}, ["eval.batch_size=7", "tracking.wandb=disabled"]).run_id() == (
        build_config({}, []).run_id()
    )
    assert build_config({}, ["seed=1"]).run_id() != build_config({}, []).run_id()


def test_a_mapping_field_is_one_key():
    """tracking.trial (a tuning trial's record) is a leaf: flattened whole, checked as a key."""
    from rhmscale.config import MAPPING_LEAVES, flatten, key_roles

    assert set(key_roles()) >= MAPPING_LEAVES
    config = build_config({}, [])
    tree = config.model_dump(mode="json")
    tree["tracking"]["trial"] = {"study": "s", "number": 3, "params": {"train.lr": 0.01}}
    assert flatten(tree)["tracking.trial"]["number"] == 3
    check_keys(tree)
    assert validate_config(tree).run_id() == config.run_id()  # bookkeeping
