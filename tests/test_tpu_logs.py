"""tpu-logs parsing: every format, restarts, duplicates, years, bad input; checked against the generator's truth.

The synthetic logs (albert_exp/tpu_logs/synth.py) know what they contain without parsing anything, so each
test compares the parser with an independent answer.
"""

from __future__ import annotations

import gzip
import os
import subprocess
from datetime import datetime

import pandas as pd
import pytest

from albert_exp.errors import UserError
from albert_exp.tpu_logs.command import flags_from_command
from albert_exp.tpu_logs.grammar import BINARY, TRUNCATED, UNKNOWN
from albert_exp.tpu_logs.parse import parse_files
from tests.tpu_logs_synth import SynthSpec, write_logs


def _values(result) -> dict:
    t = result.table
    return {(m, int(s)): v for m, s, v in zip(t["metric"], t["step"], t["value"], strict=True)}


def _times(result) -> dict:
    t = result.table
    return {(m, int(s)): w for m, s, w in zip(t["metric"], t["step"], t["wall_time"], strict=True)}


def _utc(dt: datetime) -> pd.Timestamp:
    return pd.Timestamp(dt, tz="UTC")


def test_restarts_and_duplicates_match_the_truth(tmp_path):
    spec = SynthSpec(num_train_steps=5000, crashes=(2350, 3720), eval_every=1000, order="random", seed=1)
    logs = write_logs(spec, tmp_path)
    assert len(logs.files) == 3
    # Given in the wrong order on purpose: files are ordered by their first time.
    r = parse_files(list(reversed(logs.files)), progress=False)
    assert _values(r) == logs.truth.metrics
    assert _times(r) == {k: _utc(v) for k, v in logs.truth.times.items()}
    assert [x["step"] for x in r.restarts] == logs.truth.restart_steps == [2100, 3100]
    assert dict(zip(r.checkpoints["step"], r.checkpoints["uri"], strict=True)) == logs.truth.checkpoints
    assert r.finished
    assert r.duplicates > len(r.table)  # every line came twice (glog + absl)
    # steps 2100..2300 and 3100..3700 were logged by two attempts: the later attempt's values stay (above), the
    # superseded ones are listed
    columns = ["metric", "step", "value_superseded"]
    assert {(m, int(s)): v for m, s, v in r.overlaps[columns].itertuples(index=False)} == (logs.truth.overlaps)
    assert len(logs.truth.overlaps) > 10
    assert r.start_time == _utc(logs.truth.start_time) and r.end_time == _utc(logs.truth.end_time)
    s = r.summary()
    assert s["last_step"] == 5000 and s["restarts"] == 2 and s["year_source"] == "full-date lines in the log"
    assert s["last_eval"]["step"] == 5000 and "eval/masked_lm_accuracy" in s["last_eval"]
    assert s["last_error"].endswith("UnavailableError: Socket closed")
    assert s["lines_skipped"].get(UNKNOWN, 0) == 0  # warnings, tracebacks and TPU chatter are all known
    assert len(r.input_files) == 4
    assert r.params == {  # what the log states: the batch size, the estimator's config
        "train_batch_size": "512",
        "output_dir": "gs://my-bucket/albert/out",
        "save_checkpoints_steps": "1000",
        "iterations_per_loop": "100",
        "num_tpu_cores": "8",
    }


@pytest.mark.parametrize(
    "variant",
    [
        dict(formats="absl"),
        dict(formats="glog"),
        dict(order="absl_first"),
        dict(layout="single"),
        dict(gzip=True),
        dict(crlf=True),
        dict(gzip=True, crlf=True, layout="single"),
    ],
)
def test_formats_and_encodings(tmp_path, variant):
    spec = SynthSpec(num_train_steps=3000, crashes=(1750,), eval_every=1000, seed=2, **variant)
    logs = write_logs(spec, tmp_path)
    r = parse_files(logs.files, progress=False)
    assert _values(r) == logs.truth.metrics
    assert [x["step"] for x in r.restarts] == logs.truth.restart_steps == [1100]
    if variant.get("formats") != "absl":  # absl lines carry no time of their own
        assert _times(r) == {k: _utc(v) for k, v in logs.truth.times.items()}


def test_year_from_flag_file_name_or_mtime_and_across_new_year(tmp_path):
    spec = SynthSpec(
        num_train_steps=3000,
        steps_per_sec=0.2,
        start=datetime(2019, 12, 31, 22, 0, 0),
        cpp_header=False,
        crashes=(1500,),
        seed=3,
    )
    logs = write_logs(spec, tmp_path / "a")
    truth = {k: _utc(v) for k, v in logs.truth.times.items()}
    assert logs.truth.end_time.year == 2020  # the run crosses new year inside the first file
    r = parse_files(logs.files, year=2019, progress=False)
    assert r.year_source == "--year" and _times(r) == truth
    for f in logs.files:  # no year anywhere: the modification time (just after the run) decides
        ts = logs.truth.end_time.timestamp() + 3600
        os.utime(f, (ts, ts))
    r = parse_files(logs.files, progress=False)
    assert r.year_source == "file modification time" and _times(r) == truth
    named = write_logs(SynthSpec(**{**spec.__dict__, "stem": "run-20191231T2200Z"}), tmp_path / "b")
    r = parse_files(named.files, progress=False)
    assert r.year_source == "date in the file name" and _times(r) == truth


def test_bad_input_is_counted_not_fatal(tmp_path):
    spec = SynthSpec(num_train_steps=3000, crashes=(1500,), garbage=True, truncate_last=True, seed=4)
    logs = write_logs(spec, tmp_path)
    r = parse_files(logs.files, progress=False)
    assert _values(r) == logs.truth.metrics  # the cut loss line at the end is not a point
    s = r.summary()
    assert s["lines_skipped"][BINARY] == 2 and s["lines_skipped"][UNKNOWN] == 2
    assert s["lines_skipped"][TRUNCATED] == 1
    assert any("unexpected console output" in x for x in s["unknown_examples"])
    assert s["lines"] == logs.truth.lines + 1


def test_gzip_cut_short_keeps_what_it_can(tmp_path):
    logs = write_logs(SynthSpec(num_train_steps=3000, seed=5), tmp_path)
    data = gzip.compress(logs.files[0].read_bytes())
    cut = tmp_path / "cut.log.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    r = parse_files([cut], progress=False)
    got = _values(r)
    assert 0 < len(got) < len(logs.truth.metrics)
    assert all(logs.truth.metrics[k] == v for k, v in got.items())
    assert any("gzip stream cut short" in n for n in r.notes)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        parse_files([tmp_path / "nope.log"], progress=False)


def test_command_flags_round_trip():
    from albert_exp.config import load_config
    from albert_exp.tpu_logs.command import build_command

    cfg = load_config("experiments/tpu_recipe.yaml")
    command = build_command(cfg, log="x.log")
    assert command.rstrip().endswith("2>&1 | tee x.log")
    flags = flags_from_command(command)
    assert flags["train_batch_size"] == "512" and flags["num_train_steps"] == "1000000"
    assert flags["num_warmup_steps"] == "25000" and float(flags["learning_rate"]) == 0.00022
    assert flags["max_seq_length"] == "64" and flags["save_checkpoints_steps"] == "1000"
    assert flags["input_file"] == "gs://YOUR_BUCKET/pretraining_data/*.tfrecord"  # quoted for the shell only
    assert flags["use_tpu"] == "true" and flags["tpu_name"] == "YOUR_TPU"
    # a different batch follows the scaling rule
    cfg = load_config("experiments/tpu_recipe.yaml", ["pretrain.batch_size=1024"])
    flags = flags_from_command(build_command(cfg))
    assert flags["num_train_steps"] == "500000" and float(flags["learning_rate"]) == 0.00044


def test_command_cli_prints_a_tee_command_and_checks_required_keys(capsys):
    from albert_exp.cli import main

    assert main(["tpu-logs", "command", "--config", "experiments/tpu_recipe.yaml"]) == 0
    printed = capsys.readouterr()
    out = printed.out.strip()
    assert "GZIP" not in printed.err  # the recipe writes plain TFRecords
    assert out.splitlines()[-1].strip().startswith("} 2>&1 | tee tpu-recipe-$(date -u")
    assert "--num_train_steps=1000000" in out
    assert (
        main(["tpu-logs", "command", "--config", "experiments/tpu_recipe.yaml", "--set", "pretrain.tpu_name=null"]) == 2
    )
    assert "pretrain.tpu_name" in capsys.readouterr().err
    # GZIP output of `pretraining-data --compress true` is not what google's script reads: said before TPU hours
    assert (
        main(
            [
                "tpu-logs",
                "command",
                "--config",
                "experiments/tpu_recipe.yaml",
                "--set",
                "pretraining_data.compress=true",
            ]
        )
        == 0
    )
    assert "google's run_pretraining.py reads plain TFRecords only" in capsys.readouterr().err


def test_the_command_script_echoes_its_flags_into_the_log(tmp_path):
    from albert_exp.config import load_config
    from albert_exp.tpu_logs.command import build_command

    script = tmp_path / "run_tpu.sh"
    command = build_command(load_config("experiments/tpu_recipe.yaml"), log=str(tmp_path / "x.log"))
    fake = tmp_path / "bin"  # a stand-in python3 that prints like run_pretraining.py does
    fake.mkdir()
    (fake / "python3").write_text("#!/bin/sh\necho 'INFO:tensorflow:loss = 3.5, step = 100' >&2\n")
    (fake / "python3").chmod(0o755)
    script.write_text(command + "\n")
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True)
    r = parse_files([tmp_path / "x.log"], year=2020, progress=False)
    assert r.flags == flags_from_command(command) and r.flags["learning_rate"] == "0.00022"


def test_command_echoed_in_the_log_becomes_flags(tmp_path):
    logs = write_logs(SynthSpec(num_train_steps=2000, echo_command=True, seed=6), tmp_path)
    r = parse_files(logs.files, progress=False)
    assert r.flags == flags_from_command(logs.truth.command)
    assert r.flags["num_train_steps"] == "2000" and r.flags["use_tpu"] == "true"


def test_bulk_chatter_filter_gives_what_feeding_every_line_gives(tmp_path):
    from albert_exp.tpu_logs.grammar import FileParser
    from albert_exp.tpu_logs.parse import parse_file, read_log

    spec = SynthSpec(
        num_train_steps=3000,
        crashes=(1750,),
        eval_every=1000,
        order="random",
        garbage=True,
        truncate_last=True,
        layout="single",
        echo_command=True,
        seed=7,
    )
    path = write_logs(spec, tmp_path).files[0]
    bulk = parse_file(path).parser
    lines, tail, _ = read_log(path)
    slow = FileParser(path.name)
    slow.feed(lines, 1)
    slow.counts[TRUNCATED] += 1
    slow.lines_read += 1
    slow.close()

    def rows(p):
        return list(zip(p.line, [p.timeline[i] for i in p.ti], p.own, p.step, p.metric, p.value, p.seg, strict=True))

    assert rows(bulk) == rows(slow) and len(rows(slow)) > 50
    assert [(c[0], bulk.timeline[c[1]], *c[2:]) for c in bulk.checkpoints] == [
        (c[0], slow.timeline[c[1]], *c[2:]) for c in slow.checkpoints
    ]
    assert bulk.counts == slow.counts and bulk.lines_read == slow.lines_read == len(lines) + 1
    assert bulk.timeline[bulk.first_ti] == slow.timeline[slow.first_ti]
    assert bulk.timeline[-1] == slow.timeline[-1]  # the file's end time
    assert bulk.flags == slow.flags and bulk.restarts == slow.restarts


def test_timezone_of_the_tpu_host_is_applied(tmp_path):
    logs = write_logs(SynthSpec(num_train_steps=2000, seed=8), tmp_path)  # April: Berlin is UTC+2
    utc = parse_files(logs.files, progress=False)
    berlin = parse_files(logs.files, timezone="Europe/Berlin", progress=False)
    shift = (utc.table["wall_time"] - berlin.table["wall_time"]).unique()
    assert list(shift) == [pd.Timedelta(hours=2)]
    with pytest.raises(UserError, match="time zone"):
        parse_files(logs.files, timezone="Mars/Olympus", progress=False)


def test_restart_in_one_file_without_a_start_banner_is_found_by_the_step_going_back(tmp_path):
    logs = write_logs(SynthSpec(num_train_steps=3000, crashes=(1750,), layout="single", seed=9), tmp_path)
    path = logs.files[0]
    kept = [ln for ln in path.read_text().splitlines() if "Running training" not in ln]
    path.write_text("\n".join(kept) + "\n")
    r = parse_files([path], progress=False)
    assert [x["step"] for x in r.restarts] == [1100] and _values(r) == logs.truth.metrics


def test_logs_without_timestamps_are_ordered_by_their_steps(tmp_path):
    logs = write_logs(SynthSpec(num_train_steps=4000, crashes=(1750, 2900), formats="absl", seed=21), tmp_path)
    r = parse_files(list(reversed(logs.files)), progress=False)  # argument order is not the attempt order
    assert [x["step"] for x in r.restarts] == logs.truth.restart_steps == [1100, 2100]
    assert _values(r) == logs.truth.metrics  # the latest attempt's values at the overlapping steps


def test_the_year_comes_from_starting_evaluation_lines(tmp_path):
    spec = SynthSpec(num_train_steps=2000, cpp_header=False, final_eval=True, start=datetime(2020, 1, 26, 9), seed=22)
    logs = write_logs(spec, tmp_path)
    ts = datetime(2024, 6, 1).timestamp()  # copied years later: the mtime says nothing about the run
    os.utime(logs.files[0], (ts, ts))
    r = parse_files(logs.files, progress=False)
    assert r.year_source == "full-date lines in the log"
    assert _times(r) == {k: _utc(v) for k, v in logs.truth.times.items()}
    assert r.table["metric"].eq("eval/masked_lm_accuracy").sum() == 1  # the --do_eval block after the end


def test_dst_fall_back_hour_is_resolved_by_the_order_of_the_lines(tmp_path):
    # Europe/Berlin, 2020-10-25: 03:00 CEST (UTC+2) -> 02:00 CET (UTC+1); the hour 02:xx comes twice.
    local = ["01:50", "02:10", "02:40", "02:55", "02:05", "02:30", "02:59", "03:10"]
    utc = ["23:50", "00:10", "00:40", "00:55", "01:05", "01:30", "01:59", "02:10"]
    lines = [
        f"I1025 {t}:00.000000 1 basic_session_run_hooks.py:260] loss = 2.5, step = {100 * (n + 1)}"
        for n, t in enumerate(local)
    ]
    path = tmp_path / "pretrain-20201024.log"
    path.write_text("\n".join(lines) + "\n")
    r = parse_files([path], timezone="Europe/Berlin", progress=False)
    day = {"23": "2020-10-24"}
    expected = [pd.Timestamp(f"{day.get(t[:2], '2020-10-25')} {t}", tz="UTC") for t in utc]
    assert r.table.sort_values("step")["wall_time"].tolist() == expected
