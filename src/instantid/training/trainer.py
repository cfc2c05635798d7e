"""Train InstantID (Resampler + decoupled cross-attention + IdentityNet) on a prepared face data set.

Structure follows diffusers' ``examples/controlnet/train_controlnet_sdxl.py``: ``parse_args(argv)`` ->
``main(config)``, one HF ``Accelerator`` (mixed precision, gradient accumulation, multi-GPU / multi-node
through ``accelerate launch``), frozen SDXL, resumable checkpoints and periodic validation images.

Single machine::

    instantid train --data-dir data/ --output-dir run/ --resolution 1024 --mixed-precision bf16

Cluster (one line per node; ``configs/accelerate/`` holds DDP and DeepSpeed ZeRO-2 files for --config_file)::

    accelerate launch --multi_gpu --num_machines 6 --num_processes 48 --machine_rank $RANK \\
        --main_process_ip $MASTER --main_process_port 29500 --mixed_precision bf16 \\
        -m instantid.training.trainer --data-dir data/ --output-dir run/ --train-batch-size 2

Several CPU processes (what the tests run; ``--cpu`` alone starts one process unless MPI is installed)::

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m instantid.training.trainer ...

A run depends on the global batch, not on how it is spread over processes: a micro-batch's noise, timesteps and
dropout are a function of (seed, its number in the run), the learning-rate schedule counts optimizer steps,
and DDP averages gradients. So N processes x batch B equal one process x batch B x N accumulation steps up to
float summation order, and a checkpoint resumes on any process count that keeps the global batch (adjusting
--gradient-accumulation-steps).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from instantid.errors import InvalidInputError
from instantid.training.config import TrainConfig, parse_args
from instantid.training.data import FaceDataset, collate
from instantid.training.export import export_release, run_checkpoints
from instantid.training.model import (
    TRAINABLE_FILE,
    TrainingModules,
    build_modules,
    cast_frozen,
    diffusion_loss,
    step_generator,
)

LOG_FILE = "train_log.jsonl"
RELEASE_FOLDER = "release"


def _micro_batch_generator(config: TrainConfig, step: int, micro_index: int,
                           accelerator: Accelerator) -> torch.Generator:
    """Randomness of one micro-batch, keyed by its number in the whole run rather than by the process.

    accelerate deals a step's micro-batches round-robin (micro-batch k of the step goes to process k % N), so
    this process's micro-batch is number ``(step * accumulation + micro_index) * N + process_index`` of the run:
    the same number, data and draws on one process with N x accumulation steps. On one process it is the
    micro-step count ``step_generator`` has always been given, so single-process runs draw what they drew."""
    number = ((step * config.gradient_accumulation_steps + micro_index) * accelerator.num_processes
              + accelerator.process_index)
    return step_generator(config.seed, number, 0)


def _make_optimizer(config: TrainConfig, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise InvalidInputError(
                "--use_8bit_adam needs bitsandbytes (GPU only): pip install bitsandbytes, or drop the flag"
            ) from exc
        optimizer_cls = bnb.optim.AdamW8bit
    else:
        optimizer_cls = torch.optim.AdamW
    return optimizer_cls(
        params, lr=lr, betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )


def _register_checkpoint_hooks(accelerator: Accelerator, modules: TrainingModules) -> None:
    """``save_state`` writes only the trained tensors (a few GB for SDXL instead of the whole frozen UNet)."""
    from safetensors.torch import save_file

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        if accelerator.is_main_process:
            state = accelerator.unwrap_model(models[0]).trainable_state_dict()
            tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
            save_file(tensors, str(Path(output_dir) / TRAINABLE_FILE))
        if weights:
            weights.pop()

    def load_hook(models: list, input_dir: str) -> None:
        accelerator.unwrap_model(models.pop()).load_trainable(input_dir)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _find_checkpoint(config: TrainConfig) -> Path | None:
    if config.resume_from_checkpoint is None:
        return None
    if config.resume_from_checkpoint != "latest":
        path = Path(config.resume_from_checkpoint)
        if not path.is_dir():
            raise InvalidInputError(f"checkpoint folder not found: {path}")
        return path
    found = run_checkpoints(config.output_dir)
    return found[-1] if found else None


def _save_checkpoint(accelerator: Accelerator, config: TrainConfig, step: int) -> None:
    out = Path(config.output_dir)
    if accelerator.is_main_process and config.checkpoints_total_limit is not None:
        existing = run_checkpoints(out)
        for old in existing[: max(0, len(existing) - config.checkpoints_total_limit + 1)]:
            shutil.rmtree(old)
    accelerator.save_state(str(out / f"checkpoint-{step}"))


@torch.no_grad()
def _validate(modules: TrainingModules, dataset: FaceDataset, config: TrainConfig, step: int,
              accelerator: Accelerator) -> list[Path]:
    """Sample images with our inference pipeline built around the in-training modules."""
    from diffusers import EulerDiscreteScheduler

    from instantid.core.adapter import inspect_adapter
    from instantid.pipelines.sdxl import StableDiffusionXLInstantIDPipeline
    from instantid.training.export import adapter_state_dict

    net = accelerator.unwrap_model(modules.net)
    pipe = StableDiffusionXLInstantIDPipeline(
        vae=modules.vae, text_encoder=modules.text_encoders[0], text_encoder_2=modules.text_encoders[1],
        tokenizer=modules.tokenizers[0], tokenizer_2=modules.tokenizers[1], unet=net.unet,
        controlnet=net.identitynet, scheduler=EulerDiscreteScheduler.from_config(modules.noise_scheduler.config),
        add_watermarker=False,
    )
    pipe.adapter_spec = inspect_adapter(adapter_state_dict(net.unet), "in-training adapter",
                                        {"embedding_space": config.embedding_space})
    pipe.set_progress_bar_config(disable=True)
    folder = Path(config.output_dir) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(min(config.num_validation_images, len(dataset))):
        example = dataset[i]
        kps = (example["kps_image"].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        with accelerator.autocast():  # frozen weights may be fp16/bf16 while the trained ones are fp32
            image = pipe(
                prompt=example["caption"], image=kps, image_embeds=example["embedding"],
                num_inference_steps=config.validation_inference_steps, generator=torch.Generator().manual_seed(i),
            ).images[0]
        paths.append(folder / f"step-{step:06d}-{i}.png")
        image.save(paths[-1])
    return paths


def main(config: TrainConfig) -> dict[str, Any]:
    """Train; returns ``{"global_step", "losses", "release"}`` (losses of this invocation, by step)."""
    config.validate()
    out = Path(config.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "jsonl" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        # The schedule counts optimizer steps (stepped below), not optimizer steps x processes as accelerate's
        # default does: a checkpoint then carries the same schedule position to any number of processes.
        step_scheduler_with_optimizer=False,
    )
    if accelerator.gradient_accumulation_steps != config.gradient_accumulation_steps:
        # `accelerate launch --gradient_accumulation_steps` or a DeepSpeed config overrides ours silently; the
        # loop's step counting and per-example randomness would then disagree with what accelerate does.
        raise InvalidInputError(
            f"accelerate is set to {accelerator.gradient_accumulation_steps} gradient accumulation steps but "
            f"--gradient-accumulation-steps is {config.gradient_accumulation_steps}: give the same number to both"
        )
    set_seed(config.seed)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "train_config.json")

    # 1. Data first (a wrong embedding space fails before minutes of model loading), then the models:
    # frozen base, trainable adapter + IdentityNet.
    dataset = FaceDataset(config.data_dir, config.resolution, config.embedding_space, config.embedding_dim)
    modules = build_modules(config)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    cast_frozen(modules, weight_dtype, accelerator.device,
                keep_vae_fp32=config.pretrained_vae is None and weight_dtype == torch.float16)
    params = modules.net.trainable_parameters()
    ema = None
    if config.use_ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=config.ema_decay)
        accelerator.register_for_checkpointing(ema)

    # 2. Optimizer, schedule, data loader.
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.train_batch_size, shuffle=True, collate_fn=collate,
        num_workers=config.dataloader_num_workers, drop_last=len(dataset) >= config.train_batch_size,
    )
    lr = config.learning_rate
    if config.scale_lr:
        lr *= config.gradient_accumulation_steps * config.train_batch_size * accelerator.num_processes
    optimizer = _make_optimizer(config, params, lr)
    lr_scheduler = get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=config.max_train_steps,
    )
    _register_checkpoint_hooks(accelerator, modules)
    net, optimizer, loader, lr_scheduler = accelerator.prepare(modules.net, optimizer, loader, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    if accelerator.is_main_process and config.report_to != "jsonl":
        accelerator.init_trackers("instantid", config={k: str(v) for k, v in vars(config).items()})

    # 3. Resume: weights, optimizer, schedule, EMA and RNG from the checkpoint; the step from its name.
    global_step = 0
    checkpoint = _find_checkpoint(config)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        global_step = int(checkpoint.name.split("-")[1])
        accelerator.print(f"resumed from {checkpoint} at step {global_step}")
    updates_per_epoch = math.ceil(len(loader) / config.gradient_accumulation_steps)
    first_epoch = global_step // updates_per_epoch
    skip_batches = (global_step % updates_per_epoch) * config.gradient_accumulation_steps
    micro_step = global_step * config.gradient_accumulation_steps

    # 4. Train.
    log_path = out / LOG_FILE
    losses: dict[int, float] = {}
    progress = tqdm(total=config.max_train_steps, initial=global_step, desc="train",
                    disable=not accelerator.is_local_main_process)
    running = 0.0
    epoch = first_epoch
    while global_step < config.max_train_steps:
        loader.set_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(loader, skip_batches) if epoch == first_epoch else loader
        for batch in epoch_loader:
            with accelerator.accumulate(net):
                gen = _micro_batch_generator(config, global_step, micro_step % config.gradient_accumulation_steps,
                                             accelerator)
                micro_step += 1
                loss = diffusion_loss(modules, batch, gen, config.resolution, config.text_dropout,
                                      config.face_dropout, net=net, snr_gamma=config.snr_gamma).mean()
                running += accelerator.gather(loss.detach()[None]).mean().item() / config.gradient_accumulation_steps
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients and not optimizer.step_was_skipped:  # fp16 overflow: no step
                    lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            if ema is not None:
                ema.step(params)
            losses[global_step] = running
            entry = {"step": global_step, "loss": running, "lr": lr_scheduler.get_last_lr()[0]}
            running = 0.0
            progress.update(1)
            progress.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}")
            if accelerator.is_main_process:
                with log_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")
            accelerator.log(entry, step=global_step)
            if global_step % config.checkpointing_steps == 0:
                _save_checkpoint(accelerator, config, global_step)
            if accelerator.is_main_process and config.validation_steps and global_step % config.validation_steps == 0:
                _validate_with_ema(modules, dataset, config, global_step, accelerator, ema, params)
            if global_step >= config.max_train_steps:
                break
        epoch += 1
    progress.close()

    # 5. Export the published layout (EMA weights when kept).
    accelerator.wait_for_everyone()
    release = out / RELEASE_FOLDER
    if accelerator.is_main_process:
        if ema is not None:
            ema.copy_to(params)
        unwrapped = accelerator.unwrap_model(net)
        export_release(unwrapped.unet, unwrapped.identitynet, release, config.embedding_space, config.export_format)
    accelerator.end_training()
    return {"global_step": global_step, "losses": losses, "release": release}


def _validate_with_ema(modules: TrainingModules, dataset: FaceDataset, config: TrainConfig, step: int,
                       accelerator: Accelerator, ema: Any, params: list[torch.nn.Parameter]) -> None:
    """Validation samples use the EMA weights when EMA is on (what would be exported), then training resumes."""
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    _validate(modules, dataset, config, step, accelerator)
    if ema is not None:
        ema.restore(params)


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))
