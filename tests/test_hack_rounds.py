"""training/hack_rounds.py: the loop's order, what each step is given, the log, and resume. The steps
themselves (ccl_lora, versions, fit_heads / finetune_encoder, evaluate_whole_image) have their own
tests; here a stand-in writes the outputs each real command writes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from training import hack_rounds


def _arg(cmd, flag):
    return cmd[cmd.index(flag) + 1]


def _opt_values(cmd, flag):
    return [c.split("=", 1)[1] for c in cmd if c.startswith(flag + "=")]


class FakeSteps:
    def __init__(self):
        self.calls = []

    def __call__(self, cmd):
        self.calls.append(list(cmd))
        mod = cmd[0]
        if mod == "training.ccl_lora":
            out = Path(_arg(cmd, "--output_dir"))
            out.mkdir(parents=True)
            (out / "up.safetensors").write_text(f"weights of {out.name}")
            (out / "result.json").write_text(json.dumps({"upscaler": str(out / "up.safetensors"),
                                                         "final": {"psnr": 20.0, "lpips_alex": 0.4, "dists": 0.3, "hack": 1.0}}))
        elif mod == "training.data.versions":
            out = Path(_arg(cmd, "--out"))
            out.mkdir(parents=True)
            (out / "versions.json").write_text("{}")
            (out / "manifest.jsonl").write_text("".join(json.dumps({"kinds": ["clean"]}) + "\n"
                                                        for _ in range(int(_arg(cmd, "--train")))))
        elif mod in ("training.fit_heads", "training.finetune_encoder"):
            out = Path(_arg(cmd, "--output_dir")) / "model"
            out.mkdir(parents=True)
            (out / "config.json").write_text("{}")
        elif mod == "training.evaluate_whole_image":
            pols = [p.split("=", 1)[0] for p in _opt_values(cmd, "--policy")]
            after = "after" in _arg(cmd, "--out")
            Path(_arg(cmd, "--out") + ".json").write_text(json.dumps(
                {"kinds": {"clean": {"below_clean": float("nan")},
                           **{f"policy:{p}": {"below_clean": 0.9 if after else 0.2} for p in pols}}}))
        else:
            raise AssertionError(cmd)


def _base_sets(tmp_path, versions=14):
    """A base version-set folder whose sets hold ``versions`` versions (what set_size reads)."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "manifest.jsonl").write_text(json.dumps({"kinds": ["clean"] + ["v"] * (versions - 1)}) + "\n")
    return base


def test_rounds_hack_label_retrain_check_and_resume(tmp_path, monkeypatch):
    base = _base_sets(tmp_path)
    fake = FakeSteps()
    monkeypatch.setattr(hack_rounds, "run", fake)
    argv = ["--reward", "R0", "--init", "INIT", "--versions", str(base), "--versions_val", "VAL", "--fgr", "FGR",
            "--out", str(tmp_path / "out"), "--rounds", "2", "--seeds", "0,1", "--sets", "5"]
    rows = hack_rounds.main(argv)
    mods = [c[0].split(".")[-1] for c in fake.calls]
    one = ["ccl_lora", "ccl_lora", "versions", "fit_heads", "evaluate_whole_image", "evaluate_whole_image"]
    assert mods == one * 2
    hack0, hack1 = fake.calls[0], fake.calls[6]
    assert _arg(hack0, "--reward_model") == "R0" and _arg(hack0, "--fidelity") == "none"
    r1 = str(tmp_path / "out" / "round0" / "reward" / "model")
    assert _arg(hack1, "--reward_model") == r1                       # round 1 hacks round 0's retrained reward
    v1 = fake.calls[8]
    assert len(_opt_values(v1, "--policy")) == 4                      # both rounds' upscalers join the new sets
    assert _arg(v1, "--versions-per-set") == str(14 - 1 - 4)          # the base sets' size is kept
    fit1 = fake.calls[9]
    assert [fit1[i + 1] for i, c in enumerate(fit1) if c == "--versions"] == [
        str(base), str(tmp_path / "out" / "round0" / "versions_round0"), str(tmp_path / "out" / "round1" / "versions_round1")]
    assert _arg(fake.calls[4], "--model") == "R0" and _arg(fake.calls[5], "--model") == r1
    assert rows[0]["below_before"] == {"r0-realesr-animevideov3-x4-s0": 0.2, "r0-realesr-animevideov3-x4-s1": 0.2}
    assert rows[0]["below_after"]["r0-realesr-animevideov3-x4-s1"] == 0.9
    md = (tmp_path / "out" / "rounds.md").read_text()
    assert md.count("\n| 1 | ") == 2 and "0.900" in md
    n = len(fake.calls)
    hack_rounds.main(argv)                                            # resume: every step's output is there
    assert len(fake.calls) == n


def test_too_many_policies_for_the_set_size_is_a_clear_error(tmp_path, monkeypatch):
    base = _base_sets(tmp_path, 3)
    monkeypatch.setattr(hack_rounds, "run", FakeSteps())
    with pytest.raises(ValueError, match="fewer --nets"):
        hack_rounds.main(["--reward", "R0", "--init", "I", "--versions", str(base), "--versions_val", "V",
                          "--fgr", "F", "--out", str(tmp_path / "out"), "--rounds", "1", "--seeds", "0,1,2"])


def test_adversarial_negatives_attack_every_reward_so_far(tmp_path, monkeypatch):
    base = _base_sets(tmp_path)
    fake = FakeSteps()
    monkeypatch.setattr(hack_rounds, "run", fake)
    common = ["--reward", "R0", "--init", "INIT", "--versions", str(base), "--versions_val", "VAL", "--fgr", "FGR",
              "--out", str(tmp_path / "out"), "--rounds", "2", "--adv_sets", "7"]
    hack_rounds.main(common)
    fits = [c for c in fake.calls if c[0] == "training.fit_heads"]
    r1 = str(tmp_path / "out" / "round0" / "reward" / "model")
    assert [_opt_values(f, "--adv_model") for f in fits] == [["R0"], ["R0", r1]]
    assert all(_opt_values(f, "--adv_sets") == ["7"] for f in fits)
    with pytest.raises(ValueError, match="--refit heads"):
        hack_rounds.main([*common, "--refit", "encoder", "--out", str(tmp_path / "enc")])


def test_kept_upscalers_are_copied_and_the_version_sets_read_the_copies(tmp_path, monkeypatch):
    base = _base_sets(tmp_path)
    fake = FakeSteps()
    monkeypatch.setattr(hack_rounds, "run", fake)
    keep = tmp_path / "kept"
    rows = hack_rounds.main(["--reward", "R0", "--init", "INIT", "--versions", str(base), "--versions_val", "VAL",
                             "--fgr", "FGR", "--out", str(tmp_path / "out"), "--rounds", "2",
                             "--keep_upscalers", str(keep)])
    kept = sorted(p.name for p in keep.iterdir())
    assert kept == ["round0-realesr-animevideov3-x4-s0.safetensors", "round1-realesr-animevideov3-x4-s0.safetensors"]
    assert (keep / kept[1]).read_text() == "weights of hack_realesr-animevideov3-x4-s0"
    labels = [c for c in fake.calls if c[0] == "training.data.versions"]
    assert [v.split("=", 1)[1] for v in _opt_values(labels[1], "--policy")] == [str(keep / k) for k in kept]
    assert rows[1]["hacks"]["r1-realesr-animevideov3-x4-s0"]["upscaler"] == str(keep / kept[1])
