"""Artifact directories: atomic writes, deterministic ids, content hashes."""

import json

import pytest

from posttrain.artifacts import artifact_id, atomic_dir, data_record, sha256_path, write_json_atomic


def siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_atomic_dir_leaves_nothing_when_the_block_raises(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(out) as tmp:
            (tmp / "model.safetensors").write_text("half")
            assert tmp.parent == tmp_path and tmp.name.startswith(".art.tmp-")
            raise RuntimeError("boom")
    assert siblings(out) == []


def test_atomic_dir_cleans_up_after_keyboard_interrupt(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            (tmp / "x").write_text("1")
            raise KeyboardInterrupt
    assert siblings(out) == []


def test_atomic_dir_keeps_the_old_target_when_the_block_raises(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "weights").write_text("old")
    with pytest.raises(ValueError):
        with atomic_dir(out) as tmp:
            (tmp / "weights").write_text("new")
            raise ValueError
    assert (out / "weights").read_text() == "old"
    assert siblings(out) == ["art"]


def test_atomic_dir_replaces_the_target_on_success(tmp_path):
    out = tmp_path / "nested" / "art"
    out.mkdir(parents=True)
    (out / "weights").write_text("old")
    (out / "stale_file").write_text("from the old run")
    with atomic_dir(out) as tmp:
        assert not (tmp / "weights").exists()  # a fresh directory, not a copy of the old one
        (tmp / "weights").write_text("new")
        assert (out / "weights").read_text() == "old"  # untouched until the block finishes
    assert (out / "weights").read_text() == "new"
    assert not (out / "stale_file").exists()
    assert siblings(out) == ["art"]  # no .tmp or .old directory left


def test_write_json_atomic(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2, "b": [1, 2]})
    assert json.loads(path.read_text()) == {"a": 2, "b": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_artifact_id_is_deterministic_and_tracks_inputs():
    inputs = {"parent": {"artifact_id": "pretrain-abc"}, "data": [{"sha256": "d" * 64}], "config": {"train": {"lr": 1e-3}},
              "seeds": {"train": 0}}
    a = artifact_id("sft", "w" * 64, inputs)
    assert a == artifact_id("sft", "w" * 64, json.loads(json.dumps(inputs)))
    assert a.startswith("sft-") and len(a) == len("sft-") + 12
    changed = json.loads(json.dumps(inputs))
    changed["config"]["train"]["lr"] = 2e-3
    ids = {a, artifact_id("sft", "w" * 64, changed), artifact_id("sft", "x" * 64, inputs),
           artifact_id("pretrain", "w" * 64, inputs)}
    assert len(ids) == 4
    reordered = {k: inputs[k] for k in reversed(list(inputs))}  # key order does not matter
    assert artifact_id("sft", "w" * 64, reordered) == a


def test_sha256_path_of_a_directory(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("alpha")
    (d / "sub" / "b.txt").write_text("beta")
    h0 = sha256_path(d)
    assert len(h0) == 64 and sha256_path(d) == h0
    (d / "sub" / "b.txt").write_text("beta!")
    h1 = sha256_path(d)
    assert h1 != h0
    (d / "sub" / "b.txt").write_text("beta")
    assert sha256_path(d) == h0  # content, not modification time
    (d / "sub" / "b.txt").rename(d / "sub" / "c.txt")
    assert sha256_path(d) not in (h0, h1)  # file names count too
    (d / "sub" / "c.txt").rename(d / "sub" / "b.txt")
    (d / "new.txt").write_text("")
    assert sha256_path(d) != h0


def test_sha256_path_of_a_file_and_data_record(tmp_path):
    import hashlib

    f = tmp_path / "rows.jsonl"
    f.write_text('{"text": "hi"}\n')
    assert sha256_path(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    assert data_record(f, 1) == {"path": "rows.jsonl", "sha256": sha256_path(f), "rows": 1}
