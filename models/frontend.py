"""The one front end: waveform -> CQT (or note posteriors) -> 20 s chunks -> pooled, normalised network input.

Training, evaluation and the service all go through `FrontEnd`. The CQT is
computed once per track and the chunks are cut from it on its frame grid
(frame i is centred on sample i * hop), so overlapping chunks do not pay for
their shared audio twice. Training caches `FrontEnd.spectrogram` output and
calls `FrontEnd.chunk` on crops of it: the same chunking as serving.

Chunking rule (ByteCover3 section 2.1, extended for short queries):
- a track no longer than one chunk is one chunk of its own length;
- otherwise chunks of `chunk_seconds` start every `hop_seconds`, and if the
  last of them stops short of the end, one more chunk is aligned to the end,
  so no audio is dropped and no chunk is zero-padded.
Each chunk carries its start time in seconds (a multiple of the CQT hop,
within half a frame, 12 ms, of the nominal 0, 10, 20, ... s).

Features (`ExtractorConfig.features`): "cqt" is the paper's CQT magnitude; "pitch" is basic-pitch's
note posteriorgram (models/basic_pitch.py, trained on real recordings) resampled to the CQT's frame
grid, so chunking, pooling and clip positions are the same for both.

Normalisation: each chunk is divided by its own maximum (loudness invariance)
and compressed with log1p(gain * x) / log1p(gain), which maps it to [0, 1].
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor, nn

from models.basic_pitch import BasicPitch, fold_to_pitch_class, load_basic_pitch
from models.config import ExtractorConfig
from models.cqt import MultiRateCQT, cqt_frames
from models.pitch_student import DEFAULT_WEIGHTS as DEFAULT_STUDENT
from models.pitch_student import PitchStudent, load_student


def chunk_starts(n_frames: int, chunk_frames: int, hop_frames: float) -> List[int]:
    """First frame of every chunk of a spectrogram with `n_frames` frames."""
    if n_frames <= chunk_frames:
        return [0]
    starts: List[int] = []
    k = 0
    while True:
        start = int(round(k * hop_frames))
        if start + chunk_frames > n_frames:
            break
        starts.append(start)
        k += 1
    if starts[-1] + chunk_frames < n_frames:
        starts.append(n_frames - chunk_frames)
    return starts


def shift_bins(spectrogram: Tensor, bins: int) -> Tensor:
    """(bins, frames) moved `bins` up (positive) or down the frequency axis, the emptied rows silent.

    With 12 bins per octave one bin is a semitone: this is a transposition, used to augment
    training and to test key invariance. Rows are not wrapped: top notes do not reappear at the bottom.
    """
    if bins > 0:
        return torch.cat([spectrogram.new_zeros(bins, spectrogram.shape[1]), spectrogram[:-bins]])
    if bins < 0:
        return torch.cat([spectrogram[-bins:], spectrogram.new_zeros(-bins, spectrogram.shape[1])])
    return spectrogram


def fold_notes(notes: Tensor) -> Tensor:
    """(N, 88, frames) note salience, MIDI 21..108 -> (N, 12, frames) summed over octaves, row 0 is C."""
    return fold_to_pitch_class(notes.transpose(1, 2)).transpose(1, 2)


def pool_time(chunks: Tensor, factor: int) -> Tensor:
    """Average-pool (N, bins, frames) by `factor` along time; a remainder under `factor` is dropped,
    except that a chunk shorter than `factor` frames becomes one frame (its mean)."""
    frames = chunks.shape[-1]
    if frames < factor:
        return chunks.mean(dim=-1, keepdim=True)
    kept = frames // factor
    return chunks[..., : kept * factor].reshape(chunks.shape[0], chunks.shape[1], kept, factor).mean(dim=-1)


def normalise(chunks: Tensor, log_gain: float) -> Tensor:
    """Per chunk: divide by the chunk's max, then log-compress to [0, 1] (log_gain 0: no compression).
    (N, bins, T) -> same."""
    peak = chunks.amax(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    if log_gain == 0.0:
        return chunks / peak
    return torch.log1p(log_gain * chunks / peak) / torch.log1p(torch.tensor(log_gain))


class PitchSalience(nn.Module):
    """(samples,) -> (88, frames) basic-pitch note posteriors on the CQT's frame grid (hop `cqt_hop`).

    basic-pitch frames come every 256 samples; each output frame is the max of the three centred on
    its sample (frame j: samples 512 j - 256, 512 j, 512 j + 256), so a short note is not averaged away.
    """

    def __init__(self, model: BasicPitch, hop: int):
        super().__init__()
        if hop != 2 * model.hop:
            raise ValueError(f"pitch features need cqt_hop = {2 * model.hop} (twice basic-pitch's hop), got {hop}")
        self.model = model
        self.hop = hop

    def forward(self, waveform: Tensor) -> Tensor:
        notes = self.model(waveform).notes.t()  # (88, waveform frames at hop 256)
        pooled = torch.nn.functional.max_pool1d(notes.unsqueeze(0), 3, stride=2, padding=1)[0]
        return pooled[:, : cqt_frames(waveform.shape[-1], self.hop)]


class StudentSalience(nn.Module):
    """(samples,) -> (88, frames): the pitch student's notes from the CQT, on the CQT's frame grid."""

    def __init__(self, cqt: MultiRateCQT, student: PitchStudent):
        super().__init__()
        self.cqt = cqt
        self.student = student

    def forward(self, waveform: Tensor) -> Tensor:
        return self.student(self.cqt(waveform))


def features_module(config: ExtractorConfig) -> nn.Module:
    """The whole-track representation `config.features` names: (samples,) -> (84 CQT bins or 88 notes, frames)."""
    if config.features == "pitch":
        return PitchSalience(load_basic_pitch(), config.cqt_hop)
    cqt = MultiRateCQT(config.sample_rate, config.cqt_hop, config.cqt_fmin, config.cqt_bins,
                       config.cqt_bins_per_octave, config.cqt_window)
    if config.features == "student":
        student = load_student(DEFAULT_STUDENT)
        if student.weights_id != config.pitch_student_id:
            raise ValueError(f"the config needs pitch student {config.pitch_student_id!r}, "
                             f"{DEFAULT_STUDENT} holds {student.weights_id!r}; train or restore that student")
        return StudentSalience(cqt, student)
    return cqt


def pitch_classes(features: Tensor, notes: bool) -> Tensor:
    """(88 notes or 84 CQT bins, frames) -> (12, frames) summed over octaves, row 0 is C."""
    if notes:
        return fold_notes(features.unsqueeze(0))[0]
    return features.reshape(-1, 12, features.shape[-1]).sum(dim=0)


class FrontEnd(nn.Module):
    def __init__(self, config: ExtractorConfig):
        super().__init__()
        self.features = features_module(config)
        self.note_features = config.features != "cqt"
        self.sequence_pool = config.sequence_pool
        self.chunk_frames = config.frames_per_chunk
        self.hop_frames = config.hop_frames
        self.frame_seconds = config.frame_seconds
        self.time_pool = config.time_pool
        self.log_gain = float(config.log_gain)
        self.fold_octaves = config.fold_octaves

    def forward(self, waveform: Tensor) -> Tuple[Tensor, Tensor]:
        """(samples,) -> network input (N, 1, bins, T) and chunk start times in seconds (N,)."""
        return self.chunk(self.spectrogram(waveform))

    @torch.jit.export
    def spectrogram(self, waveform: Tensor) -> Tensor:
        """(samples,) -> (bins, frames) CQT magnitude (or note posteriors) of the whole track."""
        return self.features(waveform)

    @torch.jit.export
    def pitch_sequence(self, spectrogram: Tensor) -> Tensor:
        """(bins, frames) -> (12, frames // sequence_pool) uint8 pitch classes for stage 3, each frame scaled to
        max 255 (a silent frame stays 0); at least one frame."""
        classes = pool_time(pitch_classes(spectrogram.float(), self.note_features).unsqueeze(0), self.sequence_pool)[0]
        peak = classes.amax(dim=0, keepdim=True).clamp_min(1e-8)
        return (255.0 * classes / peak).round().to(torch.uint8)

    @torch.jit.export
    def chunk(self, spectrogram: Tensor) -> Tuple[Tensor, Tensor]:
        """(bins, frames) -> (N, 1, bins, T) pooled, normalised chunks and their start times (N,)."""
        n_frames = spectrogram.shape[-1]
        starts = chunk_starts(n_frames, self.chunk_frames, self.hop_frames)
        length = min(self.chunk_frames, n_frames)
        chunks = torch.stack([spectrogram[:, s : s + length] for s in starts])
        if self.fold_octaves:
            # three cycles of the 12 pitch classes, stacked: convolutions see across the B-C wrap, and the
            # ResNet's strides still leave more than one row (12 rows would shrink to 1 x 1 on a short crop)
            chunks = fold_notes(chunks.float()).repeat(1, 3, 1)  # (N, 36, length)
        pooled = normalise(pool_time(chunks.float(), self.time_pool), self.log_gain)
        start_seconds = torch.tensor(starts, dtype=torch.float32, device=spectrogram.device) * self.frame_seconds
        return pooled.unsqueeze(1), start_seconds
