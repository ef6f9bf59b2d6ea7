"""Decoding: bytes or a path in, mono float32 at the model's sample rate out.

Everything a user can upload passes through `decode_audio`; every way it can
be unusable ends in one `AudioError` whose `reason` is a stable code (the
service maps it to a status) and whose message says what to do about it.
soundfile's bundled libsndfile reads WAV, FLAC, OGG/Vorbis, Opus and MP3.
"""

from __future__ import annotations

import io
import math
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Callable, Union

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torchaudio.functional.functional import _get_sinc_resample_kernel

AudioSource = Union[bytes, bytearray, memoryview, str, os.PathLike]

SUPPORTED_FORMATS = "WAV, FLAC, OGG/Vorbis, Opus or MP3"
MAX_CHANNELS = 8
MIN_SOURCE_RATE = 4_000  # below this no CQT bin up to ~4 kHz can exist
MAX_SOURCE_RATE = 192_000  # the highest rate studio masters use; 384 kHz x 8 channels once cost 109 s of CPU
# Decoding costs CPU per frame (about 200 to 350 ns here, resampling included, whatever the channel count), and a
# compressed upload can declare far more frames than its size suggests (a 1.7 MB FLAC held 299 s at 384 kHz x 8
# channels and cost 109 s of CPU). So the frames an upload may decode to are bounded twice: by its size (the first
# minute at 48 kHz always, beyond it MAX_FRAMES_PER_BYTE per uploaded byte: Opus at 12 kb/s needs 32, lossless music
# under 1), and by the duration limit at 48 kHz (a 192 kHz file may last a quarter of it).
FREE_FRAMES = 60 * 48_000
MAX_FRAMES_PER_BYTE = 32
FRAMES_PER_SECOND_ALLOWED = 48_000
SILENCE_PEAK = 10 ** (-70 / 20)  # a peak under -70 dBFS is treated as silence
MIN_SECONDS = 0.5  # shortest audio the front end accepts
HEADROOM = 2.0**-8  # scale of the mono signal while it is resampled (a power of two: undone exactly)


class AudioError(ValueError):
    """Audio that cannot be used. `reason` is a stable machine-readable code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


StopCheck = Callable[[], bool]  # asked between blocks: True when the caller no longer wants the audio


def never_stop() -> bool:
    return False


class DecodeCancelled(Exception):
    """`should_stop` said so between two blocks: the caller no longer wants the audio (its client has gone)."""


def frame_budget(upload_bytes: int, max_seconds: float | None) -> int:
    """How many frames (samples per channel) an upload of this size may decode to."""
    by_size = max(FREE_FRAMES, MAX_FRAMES_PER_BYTE * upload_bytes)
    return by_size if max_seconds is None else min(by_size, int(max_seconds * FRAMES_PER_SECOND_ALLOWED))


def decode_audio(
    source: AudioSource,
    sample_rate: int,
    max_seconds: float | None = None,
    min_seconds: float = MIN_SECONDS,
    should_stop: StopCheck = never_stop,
) -> torch.Tensor:
    """Decode, check, mix to mono and resample. Returns a (samples,) float32 tensor.

    `should_stop` is asked before each block; when it answers True, DecodeCancelled is raised.

    The file is read DECODE_BLOCK_FRAMES frames at a time, each block mixed to mono and resampled as it
    comes (StreamingResampler): peak memory is the output plus a few blocks, whatever the file's rate,
    channel count and length (a 384 kHz 8-channel file once took 5 GB decoded whole).
    """
    resampler: StreamingResampler | None = None
    pieces: list[torch.Tensor] = []
    peak = 0.0

    def take(rate: int, block: np.ndarray) -> None:
        nonlocal resampler, peak
        frames = torch.from_numpy(block)
        # torch's reductions, not numpy's: numpy's strided mean over channels costs ~20 ms per 30 s. Float files
        # hold up to 3.4e38 per channel: where the float32 sum of the channels overflows, they are mixed again in
        # float64 (float64 every time would double the cost of the mix). The mono signal is resampled at
        # HEADROOM's scale: the resampling kernel's overshoot would pass float32's range too.
        if frames.shape[1] == 1:
            mono = frames[:, 0] * HEADROOM
        else:
            mono = frames.mean(dim=1)
            if not bool(torch.isfinite(mono).all()):
                mono = frames.mean(dim=1, dtype=torch.float64).float()  # finite where every sample is
            mono.mul_(HEADROOM)
        if not bool(torch.isfinite(mono).all()):  # NaN and inf survive the channel mean
            raise AudioError("non_finite", "the audio contains NaN or infinite samples; re-export it from the source")
        peak = max(peak, float(mono.abs().max()) / HEADROOM)
        resampler = resampler or StreamingResampler(rate, sample_rate)
        pieces.append(resampler.push(mono))

    count, rate = _read(source, max_seconds, take, should_stop)
    seconds = count / rate
    if count == 0:
        raise AudioError("no_samples", "the file decodes to zero samples; upload audio that contains sound")
    if seconds < min_seconds:
        raise AudioError("too_short", f"the audio lasts {seconds:.2f} s; at least {min_seconds:g} s is needed")
    if peak < SILENCE_PEAK:
        raise AudioError("silent", "the audio is silent (peak under -70 dBFS); upload a recording with music in it")
    pieces.append(resampler.finish())
    out = torch.cat(pieces)
    # float files hold any finite value: past full scale the audio is scaled to a peak of 1 (the model ignores
    # level, and 1e25 would overflow the CQT); HEADROOM is undone in the same division, exactly (a power of two)
    return out / (max(peak, 1.0) * HEADROOM)


DECODE_BLOCK_FRAMES = 2**16  # source frames read, mixed down and resampled at a time


class StreamingResampler:
    """`resample` applied to a signal that arrives in pieces, with the same output as on the whole.

    Input is consumed in stretches of whole resampling periods (`step_in` samples), each with `context`
    samples of real signal on both sides, so every output sample sees exactly the inputs it would see
    in one call. Rate pairs without a small ratio (the FFT path) collect the input and resample at the end.
    """

    def __init__(self, orig: int, new: int):
        self.orig, self.new = orig, new
        self.plan = None if orig == new else _resampling_plan(orig, new)
        self.buffer = torch.zeros(0)
        self.consumed = 0  # input samples whose outputs are out
        self.emitted = 0
        self.total_in = 0
        if self.plan is not None:
            _, step_in, step_out, width, kernel_size = self.plan
            self.step_in, self.step_out = step_in, step_out
            self.context = -(-(width + kernel_size) // step_in) * step_in  # whole periods, past the kernel's reach
            self.stretch = max(1, DECODE_BLOCK_FRAMES // step_in) * step_in
            self.buffer = torch.zeros(self.context)  # the silence `resample` pads before the start

    def push(self, samples: torch.Tensor) -> torch.Tensor:
        self.total_in += samples.shape[0]
        if self.orig == self.new:
            return samples.contiguous()
        self.buffer = torch.cat([self.buffer, samples])
        if self.plan is None:
            return torch.zeros(0)
        out = []
        while self.buffer.shape[0] >= 2 * self.context + self.stretch:
            window = self.buffer[: 2 * self.context + self.stretch]
            first = self.context // self.step_in * self.step_out
            out.append(resample(window, self.orig, self.new)[first : first + self.stretch // self.step_in * self.step_out])
            self.buffer = self.buffer[self.stretch :]
        produced = torch.cat(out) if out else torch.zeros(0)
        self.emitted += produced.shape[0]
        return produced

    def finish(self) -> torch.Tensor:
        if self.orig == self.new:
            return torch.zeros(0)
        if self.plan is None:
            return resample(self.buffer, self.orig, self.new)
        wanted = math.ceil(self.new * self.total_in / self.orig) - self.emitted
        first = self.context // self.step_in * self.step_out
        return resample(self.buffer, self.orig, self.new)[first : first + wanted].contiguous()


# torchaudio's windowed-sinc kernel, applied as a blocked matrix product: torchaudio
# applies it with a strided one-channel conv1d, which on CPU takes ~27 ms per 30 s
# of 44.1 kHz audio; the same kernel as a GEMM takes a few ms (tests check equality).
RESAMPLE_BLOCK = 256  # input samples per row of the matrix product, at least
RESAMPLE_MAX_MATRIX = 4_000_000  # elements; odd rate pairs (44101 -> 22050) would need gigabytes


def resample(waveform: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """(samples,) at `orig` Hz -> (ceil(samples * new / orig),) at `new` Hz, as torchaudio.functional.resample."""
    if orig == new:
        return waveform.contiguous()
    plan = _resampling_plan(orig, new)
    if plan is None:
        return _fft_resample(waveform, orig, new)
    matrix, step_in, step_out, width, kernel_size = plan
    length = waveform.shape[0]
    gcd = math.gcd(orig, new)
    frames = length // step_in + 1
    rows = -(-frames // (matrix.shape[1] // step_out))
    row_in = matrix.shape[0] - (kernel_size - step_in)  # fresh input samples per row
    total = rows * row_in + kernel_size - step_in
    padded = F.pad(waveform, (width, total - width - length))
    out = (padded.unfold(0, matrix.shape[0], row_in) @ matrix).reshape(-1)
    return out[: math.ceil(new // gcd * length / (orig // gcd))].contiguous()


@lru_cache(maxsize=16)
def _resampling_plan(orig: int, new: int):
    gcd = math.gcd(orig, new)
    step_in, step_out = orig // gcd, new // gcd
    # torchaudio's kernel size (lowpass width 6, roll-off 0.99), known before building it
    expected_width = math.ceil(6 * step_in / (min(step_in, step_out) * 0.99))
    if step_out * (2 * expected_width + step_in) > RESAMPLE_MAX_MATRIX:
        return None
    kernel, width = _get_sinc_resample_kernel(orig, new, gcd, dtype=torch.float32)
    kernel = kernel[:, 0, :]  # (step_out, kernel_size): output phase p reads kernel[p] from frame start
    kernel_size = kernel.shape[1]
    per_row = max(1, -(-RESAMPLE_BLOCK // step_in))  # frames per matrix row
    shape = (per_row * step_in + kernel_size - step_in, per_row * step_out)
    if shape[0] * shape[1] > RESAMPLE_MAX_MATRIX:
        return None
    matrix = torch.zeros(shape)
    for r in range(per_row):
        matrix[r * step_in : r * step_in + kernel_size, r * step_out : (r + 1) * step_out] = kernel.T
    return matrix, step_in, step_out, width, kernel_size


def _fft_resample(waveform: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """Band-limited resampling for rate pairs with no small ratio: truncate or extend the spectrum."""
    length = waveform.shape[0]
    target = math.ceil(length * new / orig)
    spectrum = torch.fft.rfft(waveform.double())
    bins = target // 2 + 1
    if bins <= spectrum.shape[0]:
        spectrum = spectrum[:bins]
    else:
        spectrum = F.pad(spectrum, (0, bins - spectrum.shape[0]))
    return (torch.fft.irfft(spectrum, n=target) * (target / length)).float()


def _read(source: AudioSource, max_seconds: float | None, take, should_stop: StopCheck) -> tuple[int, int]:
    """Hand the file to `take(rate, block)` block by block ((frames, channels) float32) after the header
    checks; returns (frames read, source rate)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        size = len(source)
        if size == 0:
            raise AudioError("empty", "the upload is empty (0 bytes); send an audio file")
        handle: io.BytesIO | str = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise AudioError("not_found", f"no audio file at {str(path)!r}")
        size = path.stat().st_size
        if size == 0:
            raise AudioError("empty", f"{str(path)!r} is empty (0 bytes)")
        handle = str(path)
    count = 0
    budget = frame_budget(size, max_seconds)
    try:
        with sf.SoundFile(handle) as f:
            _check_header(f.samplerate, f.channels, f.frames, max_seconds)
            rate = f.samplerate
            # the header's count first (a refusal before any work); the samples read too (headers can lie)
            if 0 < f.frames < 2**62 and f.frames > budget:
                raise _over_budget(f.frames, size, rate)
            # Read at most one frame past the limit: a file that lies in its header
            # about its length still cannot make us decode hours of audio.
            limit = None if max_seconds is None else int(max_seconds * rate) + 1
            while limit is None or count < limit:
                want = DECODE_BLOCK_FRAMES if limit is None else min(DECODE_BLOCK_FRAMES, limit - count)
                block = f.read(frames=want, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                count += block.shape[0]
                if max_seconds is not None and count > max_seconds * rate:
                    raise AudioError("too_long", f"the audio is longer than the {max_seconds:g} s limit; send a shorter file")
                if count > budget:
                    raise _over_budget(count, size, rate, at_least=True)
                if should_stop():
                    raise DecodeCancelled()
                take(rate, block)
            declared = f.frames
            wav_shortfall = _wav_shortfall_bytes(f.extra_info)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, EOFError) as err:
        detail = _OPENING_PREFIX.sub("", str(err)).strip()
        if "not recognised" in detail.lower():
            raise AudioError("unsupported_format", f"not a readable audio file ({detail}); send {SUPPORTED_FORMATS}") from None
        raise AudioError("corrupt", f"the audio file is corrupt or truncated ({detail}); re-encode or re-upload it") from None
    if wav_shortfall > 0:
        raise AudioError(
            "corrupt", f"the WAV file is truncated: {wav_shortfall} bytes of audio data are missing; re-upload the complete file"
        )
    # libsndfile pads nothing: fewer frames than the header declares means the file was cut.
    if 0 < declared < 2**62 and count < declared and (max_seconds is None or declared <= max_seconds * rate):
        missing = (declared - count) / rate
        if missing > 0.05:
            raise AudioError(
                "corrupt",
                f"the file is truncated: its header declares {declared / rate:.2f} s but only "
                f"{count / rate:.2f} s could be decoded; re-upload the complete file",
            )
    return count, rate


# libsndfile's messages start with "Error opening <_io.BytesIO object at 0x...>: "
_OPENING_PREFIX = re.compile(r"^Error opening .*?: ")
# libsndfile logs "data : <declared> (should be <present>)" for a WAV whose data chunk was cut
_WAV_DATA_SIZE = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)
# streaming writers leave these placeholders in the size field: not a truncation
_WAV_SIZE_PLACEHOLDERS = {0, 0xFFFFFFFF, 0x7FFFFFFF}


def _wav_shortfall_bytes(extra_info: str) -> int:
    match = _WAV_DATA_SIZE.search(extra_info)
    if not match:
        return 0
    declared, present = int(match.group(1)), int(match.group(2))
    if declared in _WAV_SIZE_PLACEHOLDERS:
        return 0
    return max(0, declared - present - 8)  # tolerate a trailing pad byte or block


def _over_budget(frames: int, size: int, rate: int, at_least: bool = False) -> AudioError:
    return AudioError(
        "too_much_audio",
        f"the file holds {'at least ' if at_least else ''}{frames / rate:.1f} s at {rate} Hz in {size:,} bytes, more "
        f"than this upload may decode to (the duration limit at 48 kHz, and {MAX_FRAMES_PER_BYTE} frames per byte "
        f"after the first minute); convert it to 48 kHz or below, or send a shorter file",
    )


def _check_header(rate: int, channels: int, frames: int, max_seconds: float | None) -> None:
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise AudioError(
            "bad_sample_rate",
            f"sample rate {rate} Hz is outside {MIN_SOURCE_RATE}..{MAX_SOURCE_RATE} Hz; resample the file",
        )
    if channels > MAX_CHANNELS:
        raise AudioError("too_many_channels", f"{channels} channels; at most {MAX_CHANNELS} are accepted, mix down first")
    if max_seconds is not None and 0 < frames < 2**62 and frames / rate > max_seconds:
        raise AudioError(
            "too_long", f"the audio lasts {frames / rate:.1f} s, over the {max_seconds:g} s limit; send a shorter file"
        )
