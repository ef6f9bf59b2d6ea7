"""The extractor artifact: one TorchScript file from waveform to local embeddings.

`export_extractor` scripts FrontEnd (CQT, chunking, pooling, normalisation) and
the network together and stores the `ExtractorConfig` inside the file as
`config.json`. `load_extractor` reads it back, checks that the config agrees
with the scripted module and with whatever the caller expects (an index built
for another model, say), and refuses a mismatch naming both values.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from index.alignment import AlignmentSettings
from index.common import DeviceUnavailable, choose_device, replaced_atomically, state_dict_sha256
from index.fusion import FusionSettings
from models.audio import AudioSource, StopCheck, decode_audio, never_stop
from models.config import FORMAT_VERSION, ExtractorConfig, config_mismatches
from models.fourier import Local2DFTM
from models.frontend import FrontEnd
from models.network import ResNetIBN

CONFIG_FILE = "config.json"


class ArtifactError(ValueError):
    """An extractor file that cannot be used as asked."""


def embedding_head(config: ExtractorConfig) -> nn.Module:
    """The module `config.head` names, freshly initialised: (N, 1, bins, T) chunks -> (N, D) unit vectors."""
    return Local2DFTM.from_config(config) if config.head == "2dftm" else ResNetIBN.from_config(config)


class Extractor(nn.Module):
    """(samples,) waveform at `sample_rate` -> (N, D) local embeddings and (N,) chunk start seconds."""

    def __init__(self, config: ExtractorConfig, network: Optional[nn.Module] = None):
        super().__init__()
        self.frontend = FrontEnd(config)
        self.network = network if network is not None else embedding_head(config)
        self.max_batch_chunks = config.max_batch_chunks
        # recorded in the scripted module so a loader can cross-check config.json
        self.sample_rate = config.sample_rate
        self.embedding_dim = config.embedding_dim
        self.time_pool = config.time_pool
        self.cqt_bins = config.cqt_bins

    def forward(self, waveform: Tensor) -> Tuple[Tensor, Tensor]:
        chunks, starts = self.frontend(waveform)
        return self.embed_chunks(chunks), starts

    @torch.jit.export
    def embed_chunks(self, chunks: Tensor) -> Tensor:
        """(N, 1, bins, T) -> (N, D), at most `max_batch_chunks` chunks per network call."""
        outputs: List[Tensor] = []
        for first in range(0, chunks.shape[0], self.max_batch_chunks):
            outputs.append(self.network(chunks[first : first + self.max_batch_chunks]))
        return torch.cat(outputs)

    @torch.jit.export
    def analyse(self, waveform: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """forward's embeddings and starts, and the (12, T) uint8 pitch-class sequence stage 3 aligns, from one
        pass of the front end."""
        spectrogram = self.frontend.spectrogram(waveform)
        chunks, starts = self.frontend.chunk(spectrogram)
        return self.embed_chunks(chunks), starts, self.frontend.pitch_sequence(spectrogram)


def weights_digest(module: nn.Module) -> str:
    """The 12 hex digits of the weights' hash that a model_id ends with (tensors hashed in their own dtype)."""
    return state_dict_sha256(module.state_dict())[:12]


def export_extractor(network: nn.Module, config: ExtractorConfig, path: str | os.PathLike) -> ExtractorConfig:
    """Script network (the embedding head) + front end into one file; returns the config as stored (with its model_id)."""
    if isinstance(network, ResNetIBN) and (network.reduction.out_features != config.embedding_dim
                                           or network.channels != config.channels):
        raise ArtifactError(
            f"network (C={network.channels}, D={network.reduction.out_features}) does not match config "
            f"(C={config.channels}, D={config.embedding_dim})"
        )
    if isinstance(network, Local2DFTM) and (network.projection.shape[1] != config.embedding_dim
                                            or network.patch_frames != config.patch_frames):
        raise ArtifactError(
            f"2DFTM head (patch {network.patch_frames}, D={network.projection.shape[1]}) does not match config "
            f"(patch {config.patch_frames}, D={config.embedding_dim})"
        )
    config = config.replace(model_id=f"{config.model_version}-{weights_digest(network)}")
    module = Extractor(config, network).cpu().eval()
    scripted = torch.jit.script(module)
    with replaced_atomically(path) as file:
        torch.jit.save(scripted, file, _extra_files={CONFIG_FILE: config.to_json()})
    return config


def stage3_settings(config: ExtractorConfig) -> Optional[Tuple[FusionSettings, AlignmentSettings]]:
    """The artifact's stage 3 (how many candidates to align, how to fuse, how to align), or None when it has none."""
    if not config.stage3:
        return None
    fusion_fields = set(FusionSettings.__dataclass_fields__)
    alignment_fields = set(AlignmentSettings.__dataclass_fields__)
    unknown = sorted(set(config.stage3) - fusion_fields - alignment_fields)
    if unknown:
        raise ArtifactError(f"unknown stage3 settings {unknown}; known: {sorted(fusion_fields | alignment_fields)}")
    fusion = FusionSettings(**{k: v for k, v in config.stage3.items() if k in fusion_fields})
    alignment = AlignmentSettings(**{k: v for k, v in config.stage3.items() if k in alignment_fields})
    return (fusion, alignment) if fusion.top_n > 0 else None


@dataclass(frozen=True)
class LocalEmbeddings:
    vectors: Tensor  # (N, D) float32, L2-normalised, on the CPU
    starts_s: Tensor  # (N,) chunk start times in seconds
    duration_s: float
    sequence: Optional[Tensor] = None  # (12, T) uint8 pitch classes, when the artifact has a stage 3


class LoadedExtractor:
    """A loaded artifact: its config, its device, and the calls the rest of the code makes."""

    def __init__(self, module: torch.jit.ScriptModule, config: ExtractorConfig, device: torch.device):
        self.module = module
        self.config = config
        self.device = device
        # read once (the config is frozen), so a bad stage3 entry is refused when the artifact loads
        self.stage3: Optional[Tuple[FusionSettings, AlignmentSettings]] = stage3_settings(config)

    @property
    def model_id(self) -> str:
        return self.config.model_id

    def decode(self, source: AudioSource, max_seconds: float | None = None,
               should_stop: StopCheck = never_stop) -> Tensor:
        return decode_audio(source, self.config.sample_rate, max_seconds=max_seconds, should_stop=should_stop)

    @torch.inference_mode()
    def embed_waveform(self, waveform: Tensor) -> LocalEmbeddings:
        duration_s = waveform.shape[-1] / self.config.sample_rate
        if self.stage3 is None:
            vectors, starts = self.module(waveform.to(self.device))
            return LocalEmbeddings(vectors.float().cpu(), starts.cpu(), duration_s)
        vectors, starts, sequence = self.module.analyse(waveform.to(self.device))
        return LocalEmbeddings(vectors.float().cpu(), starts.cpu(), duration_s, sequence.cpu())

    def embed(self, source: AudioSource, max_seconds: float | None = None) -> LocalEmbeddings:
        return self.embed_waveform(self.decode(source, max_seconds))


def load_extractor(
    path: str | os.PathLike,
    device: str | torch.device | None = "auto",
    expect: Optional[Mapping[str, object]] = None,
) -> LoadedExtractor:
    """Load an artifact on `device` ('auto': CUDA when present, else CPU) and check its config.

    `expect` maps config fields to the values the caller needs (e.g. the
    `model_id` and `embedding_dim` an existing index was built with).
    """
    if not os.path.isfile(path):
        raise ArtifactError(f"no extractor artifact at {os.fspath(path)!r}; export one with `coverid export`")
    try:
        target = choose_device(device)
    except DeviceUnavailable as err:
        raise ArtifactError(str(err)) from None
    extra = {CONFIG_FILE: ""}
    try:
        module = torch.jit.load(os.fspath(path), map_location=target, _extra_files=extra)
    except RuntimeError as err:
        raise ArtifactError(f"{os.fspath(path)!r} is not a TorchScript extractor ({str(err).splitlines()[0]})") from None
    if not extra[CONFIG_FILE]:
        raise ArtifactError(f"{os.fspath(path)!r} carries no {CONFIG_FILE}; it was not written by export_extractor")
    stored = json.loads(extra[CONFIG_FILE])
    if stored.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"artifact format_version is {stored.get('format_version')!r}, this code reads {FORMAT_VERSION}; "
            "re-export the model with this version"
        )
    config = ExtractorConfig.from_dict(stored)
    # config.json must describe the scripted module it travels with
    recorded = {
        "sample_rate": int(module.sample_rate),
        "embedding_dim": int(module.embedding_dim),
        "time_pool": int(module.time_pool),
        "cqt_bins": int(module.cqt_bins),
    }
    problems = config_mismatches(stored, recorded)
    if expect:
        problems += config_mismatches(stored, dict(expect))
    if problems:
        raise ArtifactError(f"refusing extractor {os.fspath(path)!r}: " + "; ".join(problems))
    module.eval()
    return LoadedExtractor(module, config, target)
