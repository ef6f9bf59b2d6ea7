"""A small pitch-salience network on the CQT, distilled from basic-pitch: the "student" features.

basic-pitch (models/basic_pitch.py) turns audio into note posteriors that barely depend on
timbre, but costs about 460 ms per 30 s on one core. The student reads the CQT the front end
computes anyway (84 bins, MIDI 24..107, hop 512) and predicts the teacher's notes on the same
frame grid (`PitchSalience`: 88 notes, MIDI 21..108) for a few milliseconds; `models/training/distil.py`
trains it on real recordings.

Input: the CQT magnitude in dB, relative to the loudest bin within about 2 s around each frame
(a local reference, so a clip and the whole track see nearly the same input), floored at
-80 dB, mapped to [0, 1]. Harmonics are stacked as channels (the bin of the 2nd, 3rd, ...
harmonic moved onto the fundamental's row), as basic-pitch does, so a few small convolutions
can tell a note from its overtones.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from index.common import replaced_atomically, state_dict_sha256

LOWEST_CQT_MIDI = 24  # C1, the CQT's bin 0
LOWEST_NOTE_MIDI = 21  # A0, basic-pitch's note 0
N_NOTES = 88
HARMONICS = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)
HARMONIC_SHIFTS = tuple(int(round(12 * math.log2(h))) for h in HARMONICS)  # -12, 0, 12, 19, 24, 28, 31, 34
# local_db's defaults (literals there: TorchScript cannot read module globals): the input floor,
# and the window (~2 s at hop 512) whose loudest bin is 0 dB
FORMAT_VERSION = 1
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "pitch_student" / "pitch_student.pt"


def local_db(cqt: Tensor, floor_db: float = 80.0, reference_frames: int = 87) -> Tensor:
    """(..., bins, frames) magnitude -> [0, 1]: dB relative to the loudest bin within `reference_frames`."""
    db = 20.0 * torch.log10(cqt.float().clamp_min(1e-8))
    loudest = db.amax(dim=-2, keepdim=True)  # (..., 1, frames)
    shape = loudest.shape
    flat = loudest.reshape(-1, 1, shape[-1])
    reference = F.max_pool1d(flat, reference_frames, stride=1, padding=reference_frames // 2).reshape(shape)
    return ((db - reference).clamp_min(-floor_db) + floor_db) / floor_db


def harmonic_stack(notes_grid: Tensor, shifts: List[int]) -> Tensor:
    """(batch, bins, frames) -> (batch, len(shifts), bins, frames): channel k holds bin + shifts[k], zeros outside."""
    bins = notes_grid.shape[-2]
    low, high = max(0, -min(shifts)), max(0, max(shifts))
    padded = F.pad(notes_grid, (0, 0, low, high))
    return torch.stack([padded[:, low + s : low + s + bins] for s in shifts], dim=1)


class PitchStudent(nn.Module):
    """(84, frames) or (batch, 84, frames) CQT magnitude -> (88, frames) or (batch, 88, frames) note salience."""

    def __init__(self, channels: int = 16, time_stride: int = 4):
        super().__init__()
        # the network sees the CQT averaged over `time_stride` frames (4: 93 ms, chord-recognition rates) and its
        # output is repeated back onto the CQT grid: the embedding network pools time by 20 anyway
        self.time_stride = time_stride
        self.shifts = list(HARMONIC_SHIFTS)
        # the 84 CQT rows padded onto the 88 note rows: 3 notes below C1 (A0..B0), 1 above B7 (C8)
        self.pad_below = LOWEST_CQT_MIDI - LOWEST_NOTE_MIDI
        self.n_notes = N_NOTES
        self.channels = channels
        self.weights_id = ""  # set by load_student from the checked header
        # layout (batch, channels, notes, frames); kernels (notes, frames)
        self.conv1 = nn.Conv2d(len(HARMONICS), channels, (3, 3), padding=(1, 1))
        self.conv2 = nn.Conv2d(channels, channels, (3, 5), padding=(1, 2))
        self.out = nn.Conv2d(channels, 1, (3, 3), padding=(1, 1))

    def forward(self, cqt: Tensor) -> Tensor:
        batch = cqt.unsqueeze(0) if cqt.dim() == 2 else cqt
        frames = batch.shape[-1]
        coarse = F.avg_pool1d(batch.float(), self.time_stride, ceil_mode=True)  # (batch, 84, ceil(frames / stride))
        notes = torch.sigmoid(self.logits(coarse)).repeat_interleave(self.time_stride, dim=-1)[..., :frames]
        return notes[0] if cqt.dim() == 2 else notes

    @torch.jit.export
    def logits(self, cqt: Tensor) -> Tensor:
        """(batch, 84, coarse frames) -> (batch, 88, coarse frames) before the sigmoid, at the student's own
        rate (the CQT already averaged over `time_stride` frames); training uses them for a stable BCE."""
        x = local_db(cqt)
        x = F.pad(x, (0, 0, self.pad_below, self.n_notes - x.shape[1] - self.pad_below))  # (batch, 88, frames)
        x = harmonic_stack(x, self.shifts)  # (batch, 8, 88, frames)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.out(x).squeeze(1)


class StudentWeightsError(ValueError):
    """A student weight file that cannot be used as asked."""


def weights_id(state_dict: Dict[str, Tensor]) -> str:
    """A short content hash of the weights: caches of the student's features are keyed by it. Every tensor is
    hashed as float32 (unlike an extractor's weights_digest): the committed student's header holds this hash."""
    return state_dict_sha256(state_dict, as_float32=True)[:12]


def save_student(student: PitchStudent, path: str | os.PathLike, provenance: dict) -> str:
    """Write weights with a header (format, channels, id, how it was trained); returns the id."""
    state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
    header = {"format_version": FORMAT_VERSION, "channels": student.channels, "time_stride": student.time_stride,
              "weights_id": weights_id(state),
              **provenance}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as file:
        torch.save({"header": header, "state_dict": state}, file)
    return header["weights_id"]


def load_student(path: str | os.PathLike = DEFAULT_WEIGHTS) -> PitchStudent:
    if not os.path.isfile(path):
        raise StudentWeightsError(f"no pitch-student weights at {os.fspath(path)!r}; train them with `coverid distil`")
    stored = torch.load(path, map_location="cpu", weights_only=True)
    header = stored["header"]
    if header.get("format_version") != FORMAT_VERSION:
        raise StudentWeightsError(f"{os.fspath(path)!r} has format {header.get('format_version')!r}, "
                                  f"this code reads {FORMAT_VERSION}")
    if weights_id(stored["state_dict"]) != header["weights_id"]:
        raise StudentWeightsError(f"{os.fspath(path)!r}: the weights do not hash to the header's id "
                                  f"{header['weights_id']}; the file is damaged")
    student = PitchStudent(channels=int(header["channels"]), time_stride=int(header["time_stride"]))
    student.load_state_dict(stored["state_dict"])
    student.weights_id = str(header["weights_id"])
    return student.eval()


def student_id(path: str | os.PathLike = DEFAULT_WEIGHTS) -> str:
    """The id recorded in a weight file's header ('' when there is none)."""
    if not os.path.isfile(path):
        return ""
    return str(torch.load(path, map_location="cpu", weights_only=True)["header"]["weights_id"])


def installed_student_id(features: str) -> str:
    """The installed student's id when `features` is "student" (refused when none is installed), else ''."""
    if features != "student":
        return ""
    found = student_id()
    if not found:
        raise StudentWeightsError(f"no pitch student at {DEFAULT_WEIGHTS}; train one with `coverid distil --install`")
    return found
