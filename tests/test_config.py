import pytest

from rhmscale.config import valid_keys
from rhmscale.config_io import build_config, check_keys, parse_override
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
