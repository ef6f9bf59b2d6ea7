"""Spotify's basic-pitch (ICASSP 2022 "NMP" model, basic-pitch 0.4.0, Apache-2.0) in PyTorch.

Mono audio at 22,050 Hz -> per frame (hop 256, about 86.13 frames/s; frame i is
centred on sample i * 256):
- notes (frames, 88): note posteriors for MIDI 21..108 (A0..C8);
- contour (frames, 264): pitch posteriors, 3 bins per semitone, bin 3k + 1 on MIDI 21 + k;
- onsets (frames, 88): note-onset posteriors, only when asked for.

The model is nmp.onnx re-implemented, its own front end included:
1. a CQT of 309 bins, 36 per octave, from 27.5 Hz (nnAudio's CQT2010v2 as basic-pitch
   ships it): one set of 36 top-octave kernels of 256 taps, reused on the signal halved
   8 times by a 256-tap low-pass; every octave reflect-pads its signal by 128 samples;
   magnitudes scaled by sqrt(kernel length) like librosa;
2. log power normalised to [0, 1] by the min and max of the whole input window. The audio
   itself is not normalised: feed floats in [-1, 1] as decoded, like basic-pitch (librosa.load).
   The 1e-10 floor under the power makes the output depend on the gain (x0.1 moves notes by up
   to 0.025, x0.01 by 0.1, on the test signal);
3. the eval-mode batch norm on that single channel (a scale and a shift);
4. harmonic stacking: the CQT shifted to harmonics 0.5, 1, 2, ..., 7 as 8 channels of 264 bins;
5. six small convolutions (their batch norms folded in, as in the ONNX export).
The CQT kernels and the low-pass are recomputed here (numpy, same formulas as basic-pitch,
bit-identical to the ONNX constants); only the learnt tensors (16,702 numbers) are stored.

Why a track is processed in 2 s windows and not in one pass: step 2 normalises by the
min and max of the whole input, and the low octaves see the window edges everywhere (at
27.5 Hz the CQT kernel spans 161 of the window's 172 frames, the reflect padding 128), so
the network only ever saw 2 s windows with their edges. One pass over a long signal is a
different model, not the same one faster; see `BasicPitch.forward` for the windowing.
"""

import math
import os
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from index import common
from models.config import config_mismatches

# -- the model's constants, each derived from the ones above it ---------------------------
SAMPLE_RATE = 22050
HOP = 256  # samples per frame
FRAMES_PER_SECOND = SAMPLE_RATE / HOP  # 86.13
WINDOW_SAMPLES = 2 * SAMPLE_RATE - HOP  # 43,844: nmp.onnx's fixed input length
WINDOW_FRAMES = WINDOW_SAMPLES // HOP + 1  # 172
OVERLAP_FRAMES = 30  # basic-pitch's inference drops 15 frames at each side of a window
EDGE_FRAMES = OVERLAP_FRAMES // 2
KEPT_FRAMES = WINDOW_FRAMES - OVERLAP_FRAMES  # 142 frames kept from each window
WINDOW_STEP = KEPT_FRAMES * HOP  # 36,352 samples between window starts

LOWEST_MIDI = 21  # A0, 27.5 Hz
N_NOTES = 88
LOWEST_HZ = 440.0 * 2 ** ((LOWEST_MIDI - 69) / 12)
CONTOUR_BINS_PER_SEMITONE = 3
CONTOUR_BINS = N_NOTES * CONTOUR_BINS_PER_SEMITONE  # 264
BINS_PER_OCTAVE = 12 * CONTOUR_BINS_PER_SEMITONE  # 36
HARMONICS = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)
HARMONIC_SHIFTS = tuple(int(round(BINS_PER_OCTAVE * math.log2(h))) for h in HARMONICS)  # -36, 0, 36, ..., 101
# enough semitones for the 7th harmonic of C8, capped below the Nyquist frequency: 103
CQT_SEMITONES = min(
    N_NOTES + math.ceil(12 * math.log2(max(HARMONICS))),
    math.floor(12 * math.log2(SAMPLE_RATE / 2 / LOWEST_HZ)),
)
CQT_BINS = CQT_SEMITONES * CONTOUR_BINS_PER_SEMITONE  # 309
CQT_OCTAVES = math.ceil(CQT_BINS / BINS_PER_OCTAVE)  # 9: the top octave, then 8 halvings
CQT_Q = 1.0 / (2 ** (1 / BINS_PER_OCTAVE) - 1)
LOWPASS_TAPS = 256
LOWPASS_EDGES = (0.5 / 1.001, 0.5 * 1.001)  # pass band, stop band; 1 = Nyquist
LOG_FLOOR = 1e-10  # added to the CQT power before the log

FORMAT_VERSION = 1
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "basic_pitch" / "basic_pitch_icassp2022.pt"


def architecture() -> Dict[str, object]:
    """What a weight file must have been converted for; stored in its header, checked on load."""
    return {
        "format_version": FORMAT_VERSION,
        "sample_rate": SAMPLE_RATE,
        "hop": HOP,
        "window_samples": WINDOW_SAMPLES,
        "cqt_bins": CQT_BINS,
        "bins_per_octave": BINS_PER_OCTAVE,
        "lowest_hz": LOWEST_HZ,
        "harmonics": list(HARMONICS),
        "contour_bins": CONTOUR_BINS,
        "n_notes": N_NOTES,
    }


# -- fixed filters (numpy, the formulas basic-pitch uses via scipy) ------------------------
def _cosine_window(n: int, alpha: float, periodic: bool) -> np.ndarray:
    """alpha + (1 - alpha) cos, as scipy.signal.get_window builds hann (0.5) and hamming (0.54)."""
    fac = np.linspace(-np.pi, np.pi, n + 1 if periodic else n)
    return (alpha + (1 - alpha) * np.cos(fac))[:n]


def cqt_kernels() -> np.ndarray:
    """(BINS_PER_OCTAVE, taps) complex top-octave kernels: periodic Hann, unit L1 norm (nnAudio)."""
    remainder = CQT_BINS - BINS_PER_OCTAVE * (CQT_OCTAVES - 1)
    top = LOWEST_HZ * 2 ** (CQT_OCTAVES - 1) * 2 ** ((remainder - 1) / BINS_PER_OCTAVE)
    freqs = top / 2 ** (1 - 1 / BINS_PER_OCTAVE) * 2.0 ** (np.arange(BINS_PER_OCTAVE) / BINS_PER_OCTAVE)
    taps = 2 ** int(np.ceil(np.log2(np.ceil(CQT_Q * SAMPLE_RATE / freqs[0]))))  # 256
    kernels = np.zeros((BINS_PER_OCTAVE, taps), dtype=np.complex128)
    for k, freq in enumerate(freqs):
        length = np.ceil(CQT_Q * SAMPLE_RATE / freq)
        start = int(np.ceil(taps / 2 - length / 2)) - int(length % 2)
        t = np.arange(np.floor(-length / 2), np.floor(length / 2))
        atom = _cosine_window(int(length), 0.5, True) * np.exp(2j * np.pi * freq / SAMPLE_RATE * t) / length
        kernels[k, start : start + int(length)] = atom / np.abs(atom).sum()
    return kernels


def lowpass_filter() -> np.ndarray:
    """(LOWPASS_TAPS,) the half-band FIR of each halving: scipy.signal.firwin2 with a Hamming window."""
    grid = np.linspace(0.0, 1.0, 1 + 2 ** int(np.ceil(np.log2(LOWPASS_TAPS))))
    gains = np.interp(grid, [0.0, *LOWPASS_EDGES, 1.0], [1.0, 1.0, 0.0, 0.0])
    delay = np.exp(-(LOWPASS_TAPS - 1) / 2 * 1j * np.pi * grid)
    return np.fft.irfft(gains * delay)[:LOWPASS_TAPS] * _cosine_window(LOWPASS_TAPS, 0.54, False)


def cqt_scale() -> np.ndarray:
    """(CQT_BINS,) sqrt of each bin's kernel length at the full rate (librosa's normalisation)."""
    freqs = LOWEST_HZ * 2.0 ** (np.arange(CQT_BINS) / BINS_PER_OCTAVE)
    return np.sqrt(np.ceil(CQT_Q * SAMPLE_RATE / freqs))


def _halving_matrix(taps: np.ndarray, outputs: int) -> Tensor:
    """Low-pass and keep every second sample, for `outputs` samples at once: (2 * outputs + taps - 2, outputs).

    The same sums as a 256-tap conv1d of stride 2, as one GEMM over overlapping blocks
    (a strided single-channel conv1d is slow on CPU).
    """
    matrix = np.zeros((2 * outputs + len(taps) - 2, outputs))
    for j in range(outputs):
        matrix[2 * j : 2 * j + len(taps), j] = taps
    return torch.from_numpy(matrix.astype(np.float32))


class BasicPitchCQT(nn.Module):
    """(windows, samples) -> (windows, frames, CQT_BINS) magnitudes, frames = samples // HOP + 1.

    Needs samples >= 129 * 256 (the 8th halving must outlast its 128-sample reflect padding).
    """

    block = 64  # outputs per block of the halving GEMM

    def __init__(self):
        super().__init__()
        kernels = cqt_kernels()
        self.taps = kernels.shape[1]
        stacked = np.concatenate([kernels.real, kernels.imag]).T.astype(np.float32)
        self.register_buffer("kernels", torch.from_numpy(stacked), persistent=False)  # (taps, 2 * 36)
        self.register_buffer("halving", _halving_matrix(lowpass_filter(), self.block), persistent=False)
        self.register_buffer("scale", torch.from_numpy(cqt_scale().astype(np.float32)), persistent=False)
        self.n_octaves = CQT_OCTAVES
        self.n_bins = CQT_BINS
        self.bins_per_octave = BINS_PER_OCTAVE
        self.hop = HOP

    def forward(self, audio: Tensor) -> Tensor:
        minimum = (self.taps // 2 + 1) * 2 ** (self.n_octaves - 1)
        if audio.shape[-1] < minimum:
            raise ValueError(
                f"the CQT needs at least {minimum} samples per window, got {audio.shape[-1]}; pad the input"
            )
        signal = audio  # (windows, samples at 22,050 / 2**octave)
        hop = self.hop
        octaves: List[Tensor] = []
        for octave in range(self.n_octaves):
            if octave > 0:
                signal = self._halve(signal)
                hop = hop // 2
            padded = F.pad(signal.unsqueeze(1), (self.taps // 2, self.taps // 2), mode="reflect").squeeze(1)
            frames = padded.unfold(1, self.taps, hop)  # (windows, frames, taps)
            real, imag = (frames @ self.kernels).split(self.bins_per_octave, dim=-1)  # (windows, frames, 36) each
            octaves.append(torch.sqrt(real * real + imag * imag))
        octaves.reverse()  # lowest octave first
        return torch.cat(octaves, dim=-1)[..., -self.n_bins :] * self.scale

    def _halve(self, signal: Tensor) -> Tensor:
        """(windows, n) -> (windows, n // 2): output j = sum_k lowpass[k] * x[2j + k - 127], zeros outside."""
        n = signal.shape[-1]
        out = n // 2
        block = self.halving.shape[1]
        width = self.halving.shape[0]
        n_blocks = (out + block - 1) // block
        edge = (width - 2 * block) // 2  # 127
        padded = F.pad(signal, (edge, 2 * block * n_blocks + width - 2 * block - n - edge))
        rows = padded.unfold(1, width, 2 * block)  # (windows, blocks, width)
        return (rows @ self.halving).reshape(signal.shape[0], -1)[:, :out]


def normalised_log(magnitude: Tensor, floor: float = LOG_FLOOR) -> Tensor:
    """(windows, frames, bins) -> dB of the power, shifted and scaled to [0, 1] per window."""
    db = torch.log(magnitude * magnitude + floor) * (1.0 / math.log(10.0)) * 10.0
    offset = db - db.amin(dim=(1, 2), keepdim=True)
    peak = offset.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak == 0, torch.zeros_like(offset), offset / peak)  # a constant window is all zeros


def harmonic_stack(x: Tensor, shifts: List[int], n_bins: int) -> Tensor:
    """(windows, frames, bins) -> (windows, len(shifts), frames, n_bins), zeros outside.

    Bin b of channel c is input bin b + shifts[c]. The result is channels-last in memory: the
    convolutions after it run 1.4 times faster on CPU that way (the (3, 39) one 2 times).
    """
    below = max(0, -min(shifts))
    above = max(0, max(shifts) + n_bins - x.shape[-1])
    padded = F.pad(x, (below, above))
    # (windows, frames, n_bins, channels)
    stacked = torch.stack([padded[..., below + s : below + s + n_bins] for s in shifts], dim=-1)
    return stacked.permute(0, 3, 1, 2)


class Posteriorgrams(NamedTuple):
    notes: Tensor  # (..., frames, 88), MIDI 21..108
    contour: Tensor  # (..., frames, 264), 3 bins per semitone from A0
    onsets: Optional[Tensor]  # (..., frames, 88), None unless asked for


class BasicPitch(nn.Module):
    """basic-pitch's NMP network and front end. `forward` takes a whole track; `predict_windows` is nmp.onnx itself."""

    def __init__(self, max_batch_windows: int = 16):
        super().__init__()
        self.cqt = BasicPitchCQT()
        # the batch norm after the normalised log, eval mode, folded: x * input_scale + input_shift
        self.input_scale = nn.Parameter(torch.ones(1))
        self.input_shift = nn.Parameter(torch.zeros(1))
        channels = len(HARMONICS)
        # layout (windows, channels, frames, frequency); kernels (time, frequency)
        self.contour_conv = nn.Conv2d(channels, 8, (3, 39), padding=(1, 19))
        self.contour_out = nn.Conv2d(8, 1, (5, 5), padding=(2, 2))
        self.note_conv = nn.Conv2d(1, 32, (7, 7), stride=(1, CONTOUR_BINS_PER_SEMITONE), padding=(3, 2))
        self.note_out = nn.Conv2d(32, 1, (7, 3), padding=(3, 1))
        self.onset_conv = nn.Conv2d(channels, 32, (5, 5), stride=(1, CONTOUR_BINS_PER_SEMITONE), padding=(2, 1))
        self.onset_out = nn.Conv2d(33, 1, (3, 3), padding=(1, 1))
        self.shifts = list(HARMONIC_SHIFTS)
        self.contour_bins = CONTOUR_BINS
        self.hop = HOP
        self.window_samples = WINDOW_SAMPLES
        self.edge_frames = EDGE_FRAMES
        self.kept_frames = KEPT_FRAMES
        self.max_batch_windows = max_batch_windows

    def forward(self, waveform: Tensor, onsets: bool = False) -> Posteriorgrams:
        """A whole track, (samples,) or (batch, samples) -> (frames, bins) or (batch, frames, bins) each.

        frames = samples // 256 + 1, frame i centred on sample i * 256. The track is cut into
        nmp.onnx's 43,844-sample windows every 142 frames (36,352 samples), the first starting
        15 frames before sample 0 (zeros outside the track); each window gives its 142 middle
        frames. basic-pitch's own inference also keeps 142 frames per window but steps 36,164
        samples (141.27 frames), so its raw frames drift 0.73 frames per window (0.5%; a note at
        55 s shows 0.28 s late) and its note_creation.model_frames_to_time corrects the times
        afterwards; here frames are on the exact grid and need no correction. It also trims to
        floor(samples * 86 / 22050) frames, 0.15% fewer than here.
        """
        if waveform.dim() not in (1, 2) or waveform.shape[-1] == 0:
            raise ValueError(
                f"expected a (samples,) or (batch, samples) waveform with samples > 0, got shape {waveform.shape}"
            )
        audio = waveform.float().reshape(-1, waveform.shape[-1])  # (batch, samples)
        batch = audio.shape[0]
        n = audio.shape[1]
        n_frames = n // self.hop + 1
        n_windows = (n_frames + self.kept_frames - 1) // self.kept_frames
        step = self.kept_frames * self.hop
        lead = self.edge_frames * self.hop
        padded = F.pad(audio, (lead, (n_windows - 1) * step + self.window_samples - lead - n))
        # (batch * n_windows, 43844)
        windows = padded.unfold(1, self.window_samples, step).reshape(-1, self.window_samples)
        parts: List[Posteriorgrams] = []
        for first in range(0, windows.shape[0], self.max_batch_windows):
            parts.append(self.predict_windows(windows[first : first + self.max_batch_windows], onsets))
        notes = self._stitch([p.notes for p in parts], batch, n_frames)
        contour = self._stitch([p.contour for p in parts], batch, n_frames)
        onset: Optional[Tensor] = None
        if onsets:
            onset_parts: List[Tensor] = []
            for p in parts:
                part = p.onsets
                assert part is not None
                onset_parts.append(part)
            onset = self._stitch(onset_parts, batch, n_frames)
        if waveform.dim() == 1:
            return Posteriorgrams(notes[0], contour[0], None if onset is None else onset[0])
        return Posteriorgrams(notes, contour, onset)

    @torch.jit.export
    def predict_windows(self, windows: Tensor, onsets: bool = True) -> Posteriorgrams:
        """(windows, samples) each on its own, exactly nmp.onnx for 43,844 samples -> (windows, frames, bins) each."""
        x = self.features(windows)  # (windows, 8, frames, 264)
        contour = torch.sigmoid(self.contour_out(F.relu(self.contour_conv(x))))  # (windows, 1, frames, 264)
        # (windows, 32, frames, 88); from a 1-channel input the format is ambiguous: make it channels-last for note_out
        note_features = F.relu(self.note_conv(contour)).contiguous(memory_format=torch.channels_last)
        notes = torch.sigmoid(self.note_out(note_features))  # (windows, 1, frames, 88)
        onset: Optional[Tensor] = None
        if onsets:
            onset_features = F.relu(self.onset_conv(x))  # (windows, 32, frames, 88)
            onset = torch.sigmoid(self.onset_out(torch.cat([notes, onset_features], dim=1))).squeeze(1)
        return Posteriorgrams(notes.squeeze(1), contour.squeeze(1), onset)

    @torch.jit.export
    def features(self, windows: Tensor) -> Tensor:
        """(windows, samples) -> (windows, 8, frames, 264): the network's input, harmonics as channels."""
        x = normalised_log(self.cqt(windows.float())) * self.input_scale + self.input_shift  # (windows, frames, 309)
        return harmonic_stack(x, self.shifts, self.contour_bins)

    def _stitch(self, parts: List[Tensor], batch: int, n_frames: int) -> Tensor:
        """(batch * n_windows, WINDOW_FRAMES, bins) pieces -> (batch, n_frames, bins) from the kept middles."""
        kept = torch.cat(parts)[:, self.edge_frames : self.edge_frames + self.kept_frames]
        return kept.reshape(batch, -1, kept.shape[-1])[:, :n_frames]


def frame_count(n_samples: int) -> int:
    """Frames `BasicPitch.forward` yields for `n_samples` samples."""
    return n_samples // HOP + 1


def fold_to_pitch_class(notes: Tensor, lowest_midi: int = LOWEST_MIDI, n_notes: int = N_NOTES) -> Tensor:
    """(..., 88) note posteriors -> (..., 12) summed over octaves; index 0 is C (note index i is MIDI lowest_midi + i)."""
    if notes.shape[-1] != n_notes:
        raise ValueError(f"expected {n_notes} notes on the last axis, got shape {list(notes.shape)}")
    below = lowest_midi % 12  # A0 is pitch class 9
    padded = F.pad(notes, (below, (-(below + n_notes)) % 12))  # (..., 108): whole octaves from C0
    return padded.reshape(list(notes.shape[:-1]) + [-1, 12]).sum(dim=-2)


# -- weight files ---------------------------------------------------------------------------
class WeightFileError(ValueError):
    """A basic-pitch weight file that is not the one this module can use."""


def state_dict_sha256(state_dict: Dict[str, Tensor]) -> str:
    """Content hash of the tensors (names, dtypes, shapes, values), independent of how the file is pickled."""
    return common.state_dict_sha256(state_dict, with_layout=True)


def load_basic_pitch(path: str | os.PathLike = DEFAULT_WEIGHTS, max_batch_windows: int = 16) -> BasicPitch:
    """The converted basic-pitch weights as an eval-mode `BasicPitch`, after checking the file's header."""
    stored = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(stored, dict) or "header" not in stored or "state_dict" not in stored:
        raise WeightFileError(f"{path} is not a basic-pitch weight file; regenerate it with models/training/convert_basic_pitch.py")
    header, state_dict = stored["header"], stored["state_dict"]
    problems = config_mismatches(header.get("architecture", {}), architecture())
    digest = state_dict_sha256(state_dict)
    if header.get("weights_sha256") != digest:
        problems.append(f"weights_sha256: header has {header.get('weights_sha256')!r}, tensors hash to {digest!r}")
    if problems:
        raise WeightFileError(f"{path} does not fit this BasicPitch: " + "; ".join(problems))
    model = BasicPitch(max_batch_windows)
    model.load_state_dict(state_dict)
    return model.eval()
