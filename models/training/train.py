"""Training with the local alignment loss: resumable, seeded, CPU by default, CUDA when present.

The run directory holds `checkpoint.pt` (weights, proxies, optimiser, step,
random states and both configs: a checkpoint is never separated from its
settings) and `log.jsonl` (one line per logged step or validation).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from index.common import choose_device, replaced_atomically
from index.maxmean import pad_sequences
from models.config import ExtractorConfig
from models.training.dataset import Batch, BatchPlan, BatchSampler, FeatureCorpus
from models.frontend import FrontEnd
from models.training.losses import LocalAlignmentLoss
from models.network import ResNetIBN, init_reduction_from_pca

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1200
    lr: float = 1e-3
    seed: int = 0
    proxy_length: int = 4
    margin: float = 0.2
    batch: BatchPlan = field(default_factory=BatchPlan)
    log_every: int = 10
    checkpoint_every: int = 50
    validate_every: int = 200
    device: str = "auto"
    max_minutes: Optional[float] = None  # wall-clock budget: stop early (checkpointed, validated) when spent
    init_from: Optional[str] = None  # start the network (not the proxies: other works) from this checkpoint
    backgrounds: tuple[str, ...] = ()  # folders of real recordings mixed into versions (batch.background_probability)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        batch = {k: tuple(v) if isinstance(v, list) else v for k, v in data["batch"].items()}
        return cls(**{**data, "batch": BatchPlan(**batch), "backgrounds": tuple(data.get("backgrounds", ()))})


def global_config(config: ExtractorConfig) -> ExtractorConfig:
    """The ByteCover2-style baseline: one chunk (one GeM) over the whole track, same code otherwise."""
    return config.replace(chunk_seconds=3600.0, hop_seconds=3600.0)


def embed_batch(network: ResNetIBN, batch: Batch, device: torch.device) -> tuple[Tensor, Tensor]:
    """Network over every chunk group, regrouped per sample: (B, N_max, C) and mask (B, N_max).

    Chunks of different lengths run as separate groups through the convolutions,
    but the head (PCA-FC + BNNeck) sees them all at once: its batch statistics
    then come from the whole batch, and a group of one chunk (every sample of
    the global model) cannot reach BatchNorm alone.
    """
    pooled = torch.cat([network.pooled(chunks.to(device)) for chunks in batch.chunks])
    vectors = network.head(pooled)
    owners = torch.cat(list(batch.owners)).to(device)
    samples = int(owners.max().item()) + 1
    return pad_sequences([vectors[owners == owner] for owner in range(samples)])


def train(
    corpus: FeatureCorpus,
    model_config: ExtractorConfig,
    train_config: TrainConfig,
    run_dir: Path,
    validate: Optional[Callable[[ResNetIBN, int], dict]] = None,
    report: Optional[Callable[[dict], None]] = None,
    backgrounds: Optional[list[np.ndarray]] = None,
) -> Path:
    """Train (or resume) until `train_config.steps`; returns the checkpoint path.

    `backgrounds`: features of real recordings (the corpus's rows) for `batch.background_probability`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    device = choose_device(train_config.device)
    torch.manual_seed(train_config.seed)
    frontend = FrontEnd(model_config)
    sampler = BatchSampler(corpus, frontend, model_config.frame_seconds, train_config.batch, train_config.seed,
                           backgrounds=backgrounds, notes=model_config.features != "cqt")
    network = ResNetIBN.from_config(model_config).to(device)
    loss_fn = LocalAlignmentLoss(len(corpus.work_ids), model_config.embedding_dim, train_config.proxy_length,
                                 train_config.margin).to(device)
    optimiser = torch.optim.Adam([*network.parameters(), *loss_fn.parameters()], lr=train_config.lr)
    step = _resume(run_dir / CHECKPOINT, network, loss_fn, optimiser, sampler, model_config)
    if step == 0 and train_config.init_from:
        _initialise_from(Path(train_config.init_from), network, model_config)
    elif step == 0:
        _pca_initialise(network, sampler, device)
    log = open(run_dir / "log.jsonl", "a")
    started = time.monotonic()
    deadline = None if train_config.max_minutes is None else started + 60 * train_config.max_minutes
    while step < train_config.steps:
        last = step + 1 == train_config.steps or (deadline is not None and time.monotonic() > deadline)
        network.train()
        batch = sampler.sample()
        embeddings, mask = embed_batch(network, batch, device)
        terms = loss_fn(embeddings, mask.to(device), batch.labels.to(device))
        optimiser.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimiser.step()
        step += 1
        if step % train_config.log_every == 0 or last:
            record = {"step": step, "seconds": round(time.monotonic() - started, 1),
                      **{k: round(v.item(), 4) for k, v in terms.items()}}
            log.write(json.dumps(record) + "\n")
            log.flush()
            if report:
                report(record)
        if step % train_config.checkpoint_every == 0 or last:
            _save(run_dir / CHECKPOINT, step, network, loss_fn, optimiser, sampler, model_config, train_config, corpus)
        if validate and (step % train_config.validate_every == 0 or last):
            network.eval()
            record = {"step": step, "validation": validate(network, step)}
            log.write(json.dumps(record) + "\n")
            log.flush()
            if report:
                report(record)
        if last:
            break
    log.close()
    return run_dir / CHECKPOINT


@torch.no_grad()
def _pca_initialise(network: ResNetIBN, sampler: BatchSampler, device: torch.device, batches: int = 2) -> None:
    """Start the PCA-FC layer at the PCA of pooled features (ByteCover2), from a few batches."""
    network.eval()
    pooled = [network.pooled(chunks.to(device)) for _ in range(batches) for chunks in sampler.sample().chunks]
    init_reduction_from_pca(network.reduction, torch.cat(pooled))


def _initialise_from(path: Path, network: ResNetIBN, model_config: ExtractorConfig) -> None:
    """Fine-tuning: the network weights of an earlier run, whose model settings must be these."""
    network.load_state_dict(_state_for(path, model_config)["network"])


def _state_for(path: Path, model_config: ExtractorConfig) -> dict:
    """A checkpoint's state, refused when its model settings are not `model_config` (the weights depend on them)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    stored = ExtractorConfig.from_dict(state["model_config"])
    if stored != model_config:
        raise ValueError(f"{path} was trained with other model settings: {stored} (asked: {model_config}); "
                         "resuming or fine-tuning keeps the model settings")
    return state


def _save(path: Path, step: int, network, loss_fn, optimiser, sampler, model_config, train_config, corpus) -> None:
    state = {
        "step": step,
        "network": network.state_dict(),
        "loss": loss_fn.state_dict(),
        "optimiser": optimiser.state_dict(),
        "sampler_rng": sampler.rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "model_config": model_config.to_dict(),
        "train_config": train_config.to_dict(),
        "corpus": corpus.summary(),
    }
    with replaced_atomically(path) as file:
        torch.save(state, file)


def _resume(path: Path, network, loss_fn, optimiser, sampler, model_config: ExtractorConfig) -> int:
    """Continue from `path` when it exists. The training settings may change between runs (more steps,
    other augmentation: fine-tuning); the model settings may not, since the weights depend on them."""
    if not path.exists():
        return 0
    state = _state_for(path, model_config)
    network.load_state_dict(state["network"])
    loss_fn.load_state_dict(state["loss"])
    optimiser.load_state_dict(state["optimiser"])
    sampler.rng.bit_generator.state = state["sampler_rng"]
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def load_checkpoint(path: Path) -> tuple[ResNetIBN, ExtractorConfig, dict]:
    """The trained network (eval mode), its extractor config and the raw checkpoint dict."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    config = ExtractorConfig.from_dict(state["model_config"])
    network = ResNetIBN.from_config(config)
    network.load_state_dict(state["network"])
    return network.eval(), config, state


def network_embedder(network: ResNetIBN, config: ExtractorConfig, device: torch.device | str = "cpu"):
    """spectrogram (bins, frames) -> (N, D) local embeddings, through the shared front end."""
    frontend = FrontEnd(config)

    @torch.inference_mode()
    def embed(spectrogram: Tensor) -> Tensor:
        chunks, _ = frontend.chunk(spectrogram.float())
        return network.eval()(chunks.to(device)).cpu()

    return embed


def artifact_embedder(module: torch.jit.ScriptModule):
    """The same, through an exported extractor (what the service runs)."""

    @torch.inference_mode()
    def embed(spectrogram: Tensor) -> Tensor:
        chunks, _ = module.frontend.chunk(spectrogram.float())
        return module.embed_chunks(chunks).cpu()

    return embed


def validation_callback(recordings: list, config: ExtractorConfig, lengths=(30.0,), seed: int = 0):
    """mAP on held-out recordings (exhaustive MaxMean, full tracks and `lengths` clips) for the training log."""
    from models.training.evaluation import evaluate

    def validate(network: ResNetIBN, step: int) -> dict:
        results = evaluate(network_embedder(network, config), recordings, seed, exhaustive=False, lengths=lengths)
        return {key: round(value["mAP"], 4) for key, value in results["two_stage"].items() if value["mAP"] is not None}

    return validate
