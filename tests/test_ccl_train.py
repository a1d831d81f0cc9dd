"""training/ccl_lora.py end to end on tiny models: outputs, curriculum, monitor, SIGKILL + exact
resume, LoRA folder + model card, push to a local Hub server and load back."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model
from hub_fixtures import local_hub  # noqa: F401
from safetensors.torch import load_file

from tiny_sd import save_tiny_sd

from training import ccl_lora
from training.ccl import monitor as ccl_monitor

ROOT = Path(__file__).resolve().parent.parent
KILL_AFTER = ROOT / "tests" / "ccl_kill_after.py"  # runs ccl_lora.main and SIGKILLs it after step N
SCHEDULE = {"stages": [{"rm_stage": 0, "steps": 1},
                       {"rm_stage": 2, "lambda_pdm": 0.5, "plateau_window": 1, "plateau_threshold": 10.0},
                       {"rm_stage": 4, "lambda_pdm": 1.0}]}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ccl_assets")
    make_tiny_model(seed=0).save_pretrained(root / "rm")
    make_tiny_model(seed=7).save_pretrained(root / "judge")
    (root / "sched.json").write_text(json.dumps(SCHEDULE))
    return root


def base_args(assets, out, steps=4, extra=()):
    return ["--reward_model", str(assets / "rm"), "--ccl_config", str(assets / "sched.json"),
            "--max_train_steps", str(steps), "--photo_sources", "skimage", "--hr_size", "64",
            "--train_batch_size", "1", "--validation_images", "2", "--validation_steps", "2",
            "--checkpointing_steps", "2", "--learning_rate", "1e-2", "--refl_loss", "neg", "--grad_scale", "1",
            "--report_to", "none", "--output_dir", str(out), *extra]


def lora_tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))


def test_help_documents_the_main_flags(capsys):
    with pytest.raises(SystemExit):
        ccl_lora.parse_args(["--help"])
    text = capsys.readouterr().out
    for flag in ("--policy", "--pretrained_model", "--ccl_config", "--reward_model", "--lora_rank", "--lora_alpha",
                 "--mixed_precision", "--gradient_accumulation_steps", "--gradient_checkpointing",
                 "--resume_from_checkpoint", "--push_to_hub", "--hub_model_id", "--fidelity", "--judge_model"):
        assert flag in text


def test_cli_errors_name_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ccl_lora.parse_args(["--policy", "onestep"])  # no --pretrained_model
    assert "needs --pretrained_model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ccl_lora.parse_args(["--fidelity", "latent_mse"])
    assert "use l1 or mse" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ccl_lora.parse_args(["--push_to_hub"])
    assert "--hub_model_id" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="train_default|--reward_model"):
        ccl_lora.load_reward_model(str(tmp_path), torch.device("cpu"))


def test_config_file_sets_flags_and_the_command_line_wins(tmp_path):
    import yaml

    cfg = tmp_path / "flags.yaml"
    cfg.write_text(yaml.safe_dump({"learning_rate": 3e-4, "lora_rank": 16, "output_dir": "somewhere"}))
    args = ccl_lora.parse_args(["--config", str(cfg), "--lora_rank", "4"])
    assert (args.learning_rate, args.lora_rank, args.output_dir) == (3e-4, 4, Path("somewhere"))
    cfg.write_text(yaml.safe_dump({"lora_rnak": 16}))
    with pytest.raises(SystemExit):
        ccl_lora.parse_args(["--config", str(cfg)])


def test_run_outputs_curriculum_monitor_and_card(assets, tmp_path):
    out = tmp_path / "run"
    res = ccl_lora.main(base_args(assets, out, steps=4, extra=[
        "--report_to", "tensorboard", "--judge_model", str(assets / "judge"), "--judge_stage", "3",
        "--fidelity", "l1", "--lambda_fidelity", "0.1", "--lora_alpha", "16", "--gradient_accumulation_steps", "2"]))
    assert [(s["step"], s["reason"]) for s in res["switches"]] == [(1, "steps"), (3, "plateau")]
    assert res["world_size"] == 1 and res["rank_max_abs_diff"] == 0.0
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["rm_stage"] for r in log] == [0, 2, 2, 4]
    assert all("fidelity" in r for r in log)
    mon = [json.loads(x) for x in (out / "monitor.jsonl").read_text().splitlines()]
    assert [m["step"] for m in mon] == [0, 2, 4]
    for key in ("reward", "score", "pdm_penalty", "psnr", "ssim", "lpips_alex", "dists", "judge_score", "judge_flagged"):
        assert all(key in m for m in mon), key
    # LPIPS-VGG too: the hack flag reads it by default (--hack_metrics lpips_vgg,dists)
    assert all(m["lpips_alex"] > 0 and m["dists"] > 0 and m["lpips_vgg"] > 0 and "percep" not in m for m in mon)
    # BRISQUE (default --brisque auto) is there exactly when its model files are (Debian opencv-doc)
    has_brisque = ccl_monitor.brisque_unavailable() is None
    assert all(("brisque" in m) == has_brisque for m in mon)
    assert 5 < mon[0]["psnr"] < 60 and 0 <= mon[-1]["judge_flagged"] <= 1
    assert (out / "monitor.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "logs").rglob("events.out.tfevents*")), "no TensorBoard events"
    lora = out / "lora"
    assert {"pytorch_lora_weights.safetensors", "README.md", "ccl_schedule.json"} <= {p.name for p in lora.iterdir()}
    card = (lora / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name:" in front and "- lora" in front and "- super-resolution" in front
    assert '"rm_stage": 4' in card and "psnr" in card and "accelerate launch -m training.ccl_lora" in card
    assert not list(tmp_path.glob("run/lora.*")), "temporary adapter folders left behind"
    # the adapter moved away from its zero init and loads back into a fresh policy
    from diffusers_ext.policies import FeedForwardSRPolicy

    assert any(t.abs().max() > 0 for k, t in lora_tensors(out).items() if "lora_B" in k)
    FeedForwardSRPolicy.from_pretrained("realesr-animevideov3-x4").load_lora(lora)


def test_sigkill_then_resume_matches_an_uninterrupted_run(assets, tmp_path):
    ref_out, out = tmp_path / "ref", tmp_path / "crash"
    ccl_lora.main(base_args(assets, ref_out, steps=5))
    proc = subprocess.run([sys.executable, str(KILL_AFTER), "3", *base_args(assets, out, steps=5)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (out / "checkpoints" / "checkpoint-2" / "COMPLETE").is_file()
    assert not (out / "lora").exists()
    res = ccl_lora.main(base_args(assets, out, steps=5, extra=["--resume_from_checkpoint", "latest"]))
    ref_log = (ref_out / "train_log.jsonl").read_text().splitlines()
    log = (out / "train_log.jsonl").read_text().splitlines()
    assert log == ref_log  # same stages, same rewards, step for step: lost only step 3, redone identically
    a, b = lora_tensors(ref_out), lora_tensors(out)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)
    assert res["switches"] == json.loads((ref_out / "result.json").read_text())["switches"]


def test_missing_brisque_files_warn_unless_asked_for(tmp_path, monkeypatch, caplog):
    """A fresh machine without Debian opencv-doc: the default (--brisque auto) warns once and leaves
    the column out; --brisque on stops the trainer before any work, naming the fix."""
    monkeypatch.setattr(ccl_monitor, "BRISQUE_DIRS", (tmp_path / "nothing-here",))
    monkeypatch.delenv("FINPERCEP_BRISQUE_DIR", raising=False)
    assert "opencv-doc" in ccl_monitor.brisque_unavailable()
    with caplog.at_level("WARNING"):
        assert ccl_monitor.make_brisque("auto") is None
    assert "brisque" in caplog.text and "opencv-doc" in caplog.text
    assert ccl_monitor.make_brisque("off") is None and ccl_monitor.make_brisque(False) is None
    with pytest.raises(FileNotFoundError, match="--brisque on.*opencv-doc"):
        ccl_monitor.make_brisque("on")
    with pytest.raises(SystemExit, match="--brisque on.*opencv-doc"):
        ccl_lora.main(["--brisque", "on", "--output_dir", str(tmp_path / "run"), "--max_train_steps", "1"])
    assert not (tmp_path / "run").exists()  # refused before anything was written
    assert ccl_lora.parse_args(["--no_brisque"]).brisque == "off" and ccl_lora.parse_args([]).brisque == "auto"


def test_onestep_push_to_local_hub_then_load_back(assets, tmp_path, local_hub):  # noqa: F811
    from diffusers_ext import OneStepSRPipeline
    from diffusers_ext.policies import OneStepSDPolicy

    sd = save_tiny_sd(tmp_path / "tiny-sd", "onestep")
    out = tmp_path / "run"
    args = base_args(assets, out, steps=2, extra=[
        "--policy", "onestep", "--pretrained_model", str(sd), "--lora_rank", "4", "--lora_alpha", "8",
        "--lora_vae_encoder", "--fidelity", "latent_mse", "--no_brisque", "--validation_images", "1",
        "--push_to_hub", "--hub_model_id", "user/osr-lora", "--card_base_model", "user/tiny-sd"])
    local_hub.fail_next(1, status=403, route="commit")
    with pytest.raises(RuntimeError, match="--push_only") as err:
        ccl_lora.main(args)
    assert str(out / "lora") in str(err.value)
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()  # nothing lost
    ccl_lora.main(["--push_only", "--output_dir", str(out), "--hub_model_id", "user/osr-lora"])
    files = local_hub.list_files("user/osr-lora")
    assert {"pytorch_lora_weights.safetensors", "vae_encoder_lora.safetensors", "README.md"} <= set(files)
    card = local_hub.read_file("user/osr-lora", "README.md").decode()
    assert "base_model: user/tiny-sd" in card and "library_name: diffusers" in card
    lr = torch.rand(1, 3, 8, 8)
    local = OneStepSDPolicy.from_pretrained(str(sd)).load_lora(out / "lora").eval()
    with torch.no_grad():
        ref = local(lr)["images"]
    pipe = OneStepSRPipeline.from_pretrained(str(sd))
    pipe.load_lora_weights("user/osr-lora")  # downloaded from the local Hub server
    got = pipe(lr, output_type="pt").images[0]
    assert torch.allclose(got, ref, atol=1e-5)


def test_parameter_sharding_is_refused_before_any_work():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    def acc(kind, stage=None):
        plugin = SimpleNamespace(zero_stage=stage) if stage is not None else None
        return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(deepspeed_plugin=plugin))

    for ok in (acc(DistributedType.NO), acc(DistributedType.MULTI_GPU), acc(DistributedType.DEEPSPEED, 2)):
        ccl_lora.check_sharding(ok)
    for bad, name in ((acc(DistributedType.FSDP), "FSDP"), (acc(DistributedType.DEEPSPEED, 3), "ZeRO-3")):
        with pytest.raises(SystemExit, match=name + ".*ZeRO stage 1/2"):
            ccl_lora.check_sharding(bad)
