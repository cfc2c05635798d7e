"""Training beyond one process: `instantid train` under `accelerate launch --num_processes 2` (CPU, gloo) gives
the run of one process with the same global batch (batch 2 x 2 accumulation steps against 2 processes x batch
2), its checkpoint resumes on one process, and the shipped accelerate configuration files parse.

Tolerance. The two runs draw the same data order, noise, timesteps and dropout (a function of the micro-batch's
number in the run, not of the process), so what may differ is float summation order: two backwards
accumulated into one gradient against two backwards on two processes whose gradients gloo averages, and the
clipping norm summed in another order. Here, with two processes, that is exact (halving is exact in binary:
measured 0.0 difference in losses and weights); with more processes, another backend (NCCL's ring order) or
another BLAS it is ~1e-7 relative per step, which Adam can enlarge for elements whose gradient is ~0 (it divides
by sqrt(v)). Hence rel 1e-4 on losses and an L2 bound of 1e-3 of the last two steps' update on the weights:
far above rounding, far below a real difference (per-process noise changes a step's loss by ~10%, a schedule
off by a factor of 2 moves the weights by ~35% of that update).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from instantid.io.tiny import TinyConfig, build_tiny_instantid
from instantid.training.model import TRAINABLE_FILE
from instantid.training.synthetic import SPACE, make_identities, write_synthetic_dataset
from instantid.training.trainer import LOG_FILE, main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "accelerate"
RES = 64
DIM = 32
STEPS = 4
BATCH = 2  # per process; the global batch is 4 in every run


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("distributed")
    release = build_tiny_instantid(root / "tiny", TinyConfig(embedding_dim=DIM, embedding_space=SPACE))
    # 8 images, global batch 4: two optimizer steps per epoch, so the 4 steps cross an epoch (reshuffle).
    write_synthetic_dataset(root / "data", make_identities(4, DIM), per_identity=2, size=RES)
    return {"root": root, "base": release / "base", "data": root / "data"}


def _flags(setup: dict, out: str, accumulation: int) -> dict[str, object]:
    # Warm-up then linear decay: a checkpoint that stored "steps x processes" resumes off-schedule (a cosine's
    # symmetry can hide that at these few steps).
    return {
        "data-dir": setup["data"], "output-dir": setup["root"] / out, "pretrained-model": setup["base"],
        "resolution": RES, "resampler-width": 64, "embedding-space": SPACE, "embedding-dim": DIM,
        "train-batch-size": BATCH, "gradient-accumulation-steps": accumulation, "max-train-steps": STEPS,
        "learning-rate": 1e-3, "lr-scheduler": "linear",
        "lr-warmup-steps": 1, "checkpointing-steps": 2, "validation-steps": 0, "dataloader-num-workers": 0,
        "face-dropout": 0.25, "text-dropout": 0.25,
    }


def _argv(flags: dict[str, object]) -> list[str]:
    return [item for k, v in flags.items() for item in (f"--{k}", str(v))]


def _in_process(flags: dict[str, object], **extra: object) -> dict:
    from instantid.training.config import parse_args

    return main(parse_args(_argv(flags | extra)))


def _launch_two(flags: dict[str, object]) -> None:
    """`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 <instantid> train ...`: torchrun
    starts both processes and accelerate, told to use the CPU, joins them with gloo (`--cpu` alone would start
    one process unless MPI is installed). One thread per process."""
    script = Path(sys.executable).with_name("instantid")
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(script), "train", *_argv(flags)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _log(out: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in map(json.loads, (out / LOG_FILE).read_text().splitlines())}


def _trained(folder: Path) -> torch.Tensor:
    state = load_file(str(folder / TRAINABLE_FILE))
    return torch.cat([state[k].flatten() for k in sorted(state)])


def _assert_same_weights(a: Path, b: Path, reference_update: torch.Tensor) -> None:
    """Trained tensors of two checkpoints differ by at most 1e-3 of an update's size (L2 norms over every
    trained tensor: one element whose gradient is ~0 may flip Adam's step direction, the whole cannot)."""
    differ = float((_trained(a) - _trained(b)).norm())
    assert differ <= 1e-3 * float(reference_update.norm()), (differ, float(reference_update.norm()))


@pytest.fixture(scope="module")
def runs(setup: dict) -> dict:
    """One process x batch 2 x 2 accumulation steps, and two processes x batch 2 (the same global batch)."""
    one = _in_process(_flags(setup, "one", 2))
    _launch_two(_flags(setup, "two", 1))
    return {"one": one, "two": setup["root"] / "two", "one_dir": setup["root"] / "one"}


def test_two_processes_train_as_one_with_the_same_global_batch(setup: dict, runs: dict) -> None:
    one, two = runs["one"]["losses"], _log(runs["two"])
    assert sorted(two) == list(range(1, STEPS + 1))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4), (step, one, two)
    assert len({round(v, 4) for v in one.values()}) == STEPS  # the steps really differ (not a constant loss)
    update = _trained(runs["one_dir"] / f"checkpoint-{STEPS}") - _trained(runs["one_dir"] / "checkpoint-2")
    for step in (2, STEPS):
        _assert_same_weights(runs["one_dir"] / f"checkpoint-{step}", runs["two"] / f"checkpoint-{step}", update)
    assert (runs["two"] / "release" / "ip-adapter.bin").is_file()


def test_checkpoint_of_two_processes_resumes_on_one(setup: dict, runs: dict) -> None:
    resumed = _in_process(_flags(setup, "resumed", 2),
                          **{"resume-from-checkpoint": runs["two"] / "checkpoint-2"})
    assert sorted(resumed["losses"]) == [3, 4]
    for step, loss in resumed["losses"].items():
        assert loss == pytest.approx(runs["one"]["losses"][step], rel=1e-4), step
    update = _trained(runs["one_dir"] / f"checkpoint-{STEPS}") - _trained(runs["one_dir"] / "checkpoint-2")
    _assert_same_weights(runs["one_dir"] / f"checkpoint-{STEPS}", setup["root"] / "resumed" / f"checkpoint-{STEPS}",
                         update)


def _launch_env(config_file: Path) -> tuple[object, dict[str, str]]:
    """What `accelerate launch --config_file FILE -m instantid.training.trainer` hands its processes: the
    parsed launch arguments and the ACCELERATE_* environment (accelerate's own parser and env builders)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    parsed = launch_command_parser().parse_args(
        ["--config_file", str(config_file), "-m", "instantid.training.trainer", "--data-dir", "data/"])
    args, defaults, _ = _validate_launch_command(parsed)
    if args.use_deepspeed:  # as launch_command does before choosing the DeepSpeed launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return args, {k: v for k, v in env.items() if k.startswith("ACCELERATE_")}


def test_shipped_accelerate_configs_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file under configs/accelerate loads with accelerate's config classes and goes through
    `accelerate launch`'s own validation; the ZeRO-2 one yields DeepSpeed's stage-2 config (DeepSpeed itself
    need not be installed)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    files = {p.name: p for p in CONFIGS.glob("*.yaml")}
    assert {"deepspeed_zero2.yaml", "multi_gpu.yaml"} <= set(files)
    for path in files.values():
        config = load_config_from_file(str(path))
        assert config.mixed_precision == "bf16" and config.num_processes >= 2, path.name
        args, env = _launch_env(path)
        assert args.module and args.training_script == "instantid.training.trainer"
        assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    zero2, env = _launch_env(files["deepspeed_zero2.yaml"])
    assert load_config_from_file(str(files["deepspeed_zero2.yaml"])).distributed_type == DistributedType.DEEPSPEED
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()  # reads the launch environment, as each launched process does
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == 2
    assert plugin.deepspeed_config["zero_optimization"]["offload_optimizer"]["device"] == "none"
    assert plugin.deepspeed_config["gradient_clipping"] == 1.0
    # Left to the trainer: accumulation follows --gradient-accumulation-steps (see the next test).
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"
    assert load_config_from_file(str(files["multi_gpu.yaml"])).distributed_type == DistributedType.MULTI_GPU


def test_trainer_refuses_an_accumulation_that_accelerate_overrides(setup: dict,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`accelerate launch --gradient_accumulation_steps 2` (an env var) against the config's 1: a clear error
    before any model loads, not a run that counts steps differently from accelerate."""
    from instantid.errors import InvalidInputError

    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    with pytest.raises(InvalidInputError, match="gradient-accumulation-steps is 1"):
        _in_process(_flags(setup, "refused", 1))
    assert not (setup["root"] / "refused" / LOG_FILE).exists()
