"""Config loading/validation and the CLI's error contract (one line, exit 2; traceback with --debug)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from albert_exp.cli import main
from albert_exp.config import load_config, to_dict
from albert_exp.errors import ConfigError, UserError
from tests.conftest import ROOT


def test_yaml_overrides_and_command_line_overrides(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("name: x\nfinetune:\n  epochs: 3\n  learning_rate: 1.0e-4\n")
    cfg = load_config(f, ["finetune.epochs=5", "model.hidden_size=96", "finetune.train_encoder=false"])
    assert (cfg.name, cfg.finetune.epochs, cfg.finetune.learning_rate) == ("x", 5, 1e-4)
    assert cfg.model.hidden_size == 96 and cfg.finetune.train_encoder is False
    assert load_config(None, ["finetune.learning_rate=1e-6"]).finetune.learning_rate == 1e-6  # YAML 1.1 quirk
    assert to_dict(cfg)["finetune"]["epochs"] == 5


@pytest.mark.parametrize(
    "text, message",
    [
        ("finetune:\n  epoch: 3\n", "unknown key 'finetune.epoch'"),
        ("finetune:\n  epochs: three\n", "'finetune.epochs': 'three' is not an integer"),
        ("finetune:\n  on_missing_phrase: skip\n", "allowed values: drop, error"),
        ("finetune:\n  learning_rate: 2\n", "'finetune.learning_rate': must be in (0, 1)"),
        ("vocab:\n  lowercase: maybe\n", "is not a boolean"),
        ("colour: red\n", "unknown key 'colour'"),
        ("- a\n- b\n", "top level must be a mapping"),
    ],
)
def test_bad_config_names_key_file_and_allowed_values(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert message in str(err.value) and str(f) in str(err.value)


def test_unknown_key_lists_the_allowed_keys(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("finetune:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="allowed keys in finetune: .*epochs"):
        load_config(f)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("finetune:\n  epochs: 0\n")
    assert main(["finetune", "--config", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "finetune.epochs" in err
    assert main(["finetune", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    # typed flags are validated the same way (MLflow does not validate int/float parameters)
    assert main(["finetune", "--epochs", "2.5"]) == 2
    assert "'finetune.epochs': 2.5 is not an integer" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        main(["finetune", "--epochs", "x", "--debug"])


def test_empty_flag_values_mean_as_in_the_config(tmp_path, monkeypatch):
    import albert_exp.executor as ex
    from albert_exp.stage import StageResult

    seen = []
    monkeypatch.setattr(
        ex, "run_stage", lambda name, cfg, **kw: seen.append(cfg) or StageResult(name, None, "", None, {})
    )
    f = tmp_path / "e.yaml"
    f.write_text("finetune:\n  epochs: 7\n  learning_rate: 0.002\n")
    assert main(["finetune", "--config", str(f), "--epochs", "", "--learning-rate", "", "--set", ""]) == 0
    assert (seen[-1].finetune.epochs, seen[-1].finetune.learning_rate) == (7, 0.002)  # "" = as in the config
    # MLproject passes every pair in one string: each pair is applied
    assert main(["finetune", "--config", str(f), "--set", "finetune.epochs=2 finetune.batch_size=8"]) == 0
    assert (seen[-1].finetune.epochs, seen[-1].finetune.batch_size) == (2, 8)
    assert len(seen) == 2


def test_command_line_values_are_converted_by_the_fields_type():
    cfg = load_config(None, ["promote.reason=no", "promote.model_name=1e3", "finetune.epochs=3", "vocab.lowercase=no"])
    assert cfg.promote.reason == "no" and cfg.promote.model_name == "1e3"  # text stays as typed (not YAML's False)
    assert cfg.finetune.epochs == 3 and cfg.vocab.lowercase is False  # numbers and booleans are parsed
    assert load_config(None, ["pretrain.input=a.tfrecord,b.tfrecord"]).pretrain.input == ["a.tfrecord", "b.tfrecord"]
    for bad, key in (
        ("pretrain.learning_rate=0", "pretrain.learning_rate"),  # not silently the derived value
        ("pretrain.learning_rate=-1", "pretrain.learning_rate"),
        ("pretrain.num_train_steps=-5", "pretrain.num_train_steps"),
        ("pretrain.num_warmup_steps=-1", "pretrain.num_warmup_steps"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [bad])


def test_console_script_and_module_entry_agree():
    out = subprocess.run([sys.executable, "-m", "albert_exp", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "finetune" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "albert_exp", "finetune", "--config", "nope.yaml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_user_error_format():
    e = UserError("missing column 'text'", where="a.csv:1", fix="fix the header")
    assert e.format() == "a.csv:1: missing column 'text' (fix the header)"


@pytest.mark.parametrize("user", [None, "false"])
def test_mlflow_telemetry_is_off_unless_the_user_turns_it_on(monkeypatch, capsys, user):
    """No network at run time: every command turns MLflow's usage telemetry off before MLflow is imported."""
    import os

    if user is None:
        monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", user)
    with pytest.raises(SystemExit):
        main(["lineage", "--help"])
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == (user or "true")
