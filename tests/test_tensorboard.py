"""`train.report_to: tensorboard`: every metrics line's numbers as TensorBoard scalars, written by hand.

The event-file encoding is checked against known values (crc32c, TFRecord framing) and read back by
posttrain's own reader; the trainer mirrors its lines live (resume included, without duplicates); a
stage writes the artifact's tensorboard/ from metrics.jsonl.
"""

from __future__ import annotations

import json
import struct

import pytest
import torch

from posttrain.cli import main
from posttrain.training import tensorboard as tb
from posttrain.training.config import TrainConfig
from posttrain.training.trainer import Trainer
from test_safety import write_chats
from test_trainer import Squares, data


def assert_holds(logdir, lines):
    """The events in `logdir` are exactly the numbers of `lines`, step by step (as float32)."""
    got = tb.read_scalars(logdir)
    want: dict[str, list] = {}
    for line in lines:
        for tag, v in tb.line_scalars(line).items():
            want.setdefault(tag, []).append((line["step"], v))
    assert sorted(got) == sorted(want)
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        assert all(tb.same_float32(v, g) for (_, v), (_, g) in zip(points, got[tag])), tag


def test_crc32c_and_record_framing():
    assert tb.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert tb.crc32c(b"") == 0
    rec = tb.record(b"abc")
    assert len(rec) == 8 + 4 + 3 + 4 and struct.unpack("<Q", rec[:8])[0] == 3 and rec[12:15] == b"abc"
    assert struct.unpack("<I", rec[15:])[0] == tb.masked_crc(b"abc")


def test_events_hold_every_number_of_every_line_and_a_damaged_file_is_detected(tmp_path):
    lines = [{"step": 1, "loss": 2.5, "lr": 1e-3, "grad_norm": 1e39, "note": "text", "done": True},
             {"step": 2, "eval_loss": float("nan"), "pass@1": 0.25}, {"step": 300_000, "loss": -1.0}]
    path = tb.write_events(tmp_path, lines)
    assert path.name.startswith("events.out.tfevents.")
    assert_holds(tmp_path, lines)
    assert tb.read_scalars(tmp_path)["grad_norm"] == [(1, float("inf"))]  # beyond float32: infinite, not an error
    assert "note" not in tb.read_scalars(tmp_path) and "done" not in tb.read_scalars(tmp_path)
    first = tb.read_records(path)[0]
    assert tb.FILE_VERSION in first  # file_version event first, as TensorBoard expects
    raw = bytearray(path.read_bytes())
    raw[-6] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(tb.EventFileError, match="bad data checksum"):
        tb.read_records(path)


def trainer(ckpt_dir, **cfg):
    torch.manual_seed(0)
    c = TrainConfig(**{"lr": 0.05, "max_steps": 6, "log_every": 1, "save_every": 0, "warmup_ratio": 0.0,
                       "batch_size": 8, "report_to": "tensorboard", **cfg})
    return Trainer(torch.nn.Linear(3, 1), data(), c, Squares(), device=torch.device("cpu"), dtype="fp32",
                   ckpt_dir=ckpt_dir, progress=False, eval_items=data(8, seed=2))


def test_trainer_mirrors_its_lines_live_next_to_the_checkpoints(tmp_path):
    ckpts = tmp_path / "sft.checkpoints"
    t = trainer(ckpts, eval_every=3)
    t.step([data(8, seed=3)])
    assert_holds(tmp_path / "sft.tensorboard", t.state.metrics_lines)  # written as training goes
    t.state.metrics_lines.append({"step": 1, "track_kl": 0.5})  # an outer loop's own line (RL tracking)
    t.fit()
    lines = t.state.metrics_lines
    assert {"loss", "eval_loss", "eval_hits", "hits", "track_kl"} <= set(tb.read_scalars(tmp_path / "sft.tensorboard"))
    assert_holds(tmp_path / "sft.tensorboard", lines)
    assert not (tmp_path / "sft").exists()  # nothing inside the artifact's place before it is saved
    assert trainer(tmp_path / "x.checkpoints", report_to="none").events is None


def test_a_resumed_run_rewrites_the_live_events_without_duplicates(tmp_path):
    ckpts = tmp_path / "out.checkpoints"
    first = trainer(ckpts, save_every=3)
    for _ in range(4):  # killed after step 4: its checkpoint holds step 3
        first.step([data(8, seed=3)])
        if first.state.step % 3 == 0:
            first.save_checkpoint()
    assert [s for s, _ in tb.read_scalars(tmp_path / "out.tensorboard")["loss"]] == [1, 2, 3, 4]
    second = trainer(ckpts, save_every=3)
    assert second.resume() == 3
    second.fit()
    assert [s for s, _ in tb.read_scalars(tmp_path / "out.tensorboard")["loss"]] == [1, 2, 3, 4, 5, 6]
    assert_holds(tmp_path / "out.tensorboard", second.state.metrics_lines)


def test_write_artifact_events_holds_the_final_lines_and_removes_the_live_folder(tmp_path):
    live = tmp_path / "sft.tensorboard"
    tb.write_events(live, [{"step": 1, "loss": 9.0}])
    lines = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5, "reward": 0.1}]
    tb.write_artifact_events(tmp_path / "sft", lines)
    assert_holds(tmp_path / "sft" / "tensorboard", lines)
    assert not live.exists()


def test_report_to_is_an_operational_option_resume_accepts():
    from posttrain.training.resume import OPERATIONAL

    assert "train.report_to" in OPERATIONAL


def test_sft_with_report_to_tensorboard_writes_the_artifacts_events(tiny_llama_dir, tmp_path):
    chats = write_chats(tmp_path / "d.jsonl", n=12)
    out = tmp_path / "sft"
    assert main(["sft", "--no-progress", "--model", str(tiny_llama_dir), "--data", str(chats), "--out", str(out),
                 "--set", "model.device=cpu", "--set", "model.dtype=fp32", "--set", "train.max_steps=2",
                 "--set", "train.batch_size=4", "--set", "data.max_length=64", "--set", "train.log_every=1",
                 "--set", "train.report_to=tensorboard"]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert_holds(out / "tensorboard", lines)
    assert not (tmp_path / "sft.tensorboard").exists()
