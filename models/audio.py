"""Decoding: bytes or a path in, mono float32 at the model's sample rate out.

Everything a user can upload passes through `decode_audio`; every way it can
be unusable ends in one `AudioError` whose `reason` is a stable code (the
service maps it to a status) and whose message says what to do about it.
soundfile's bundled libsndfile reads WAV, FLAC, OGG/Vorbis, Opus and MP3.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

AudioSource = Union[bytes, bytearray, memoryview, str, os.PathLike]

SUPPORTED_FORMATS = "WAV, FLAC, OGG/Vorbis, Opus or MP3"
MAX_CHANNELS = 8
MIN_SOURCE_RATE = 4_000  # below this no CQT bin up to ~4 kHz can exist
MAX_SOURCE_RATE = 384_000
SILENCE_PEAK = 10 ** (-70 / 20)  # a peak under -70 dBFS is treated as silence
MIN_SECONDS = 0.5  # shortest audio the front end accepts


class AudioError(ValueError):
    """Audio that cannot be used. `reason` is a stable machine-readable code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def decode_audio(
    source: AudioSource,
    sample_rate: int,
    max_seconds: float | None = None,
    min_seconds: float = MIN_SECONDS,
) -> torch.Tensor:
    """Decode, check, mix to mono and resample. Returns a (samples,) float32 tensor."""
    data, rate = _read(source, max_seconds)
    seconds = data.shape[0] / rate
    if data.shape[0] == 0:
        raise AudioError("no_samples", "the file decodes to zero samples; upload audio that contains sound")
    if seconds < min_seconds:
        raise AudioError("too_short", f"the audio lasts {seconds:.2f} s; at least {min_seconds:g} s is needed")
    if not np.isfinite(data).all():
        raise AudioError("non_finite", "the audio contains NaN or infinite samples; re-export it from the source")
    mono = data.mean(axis=1, dtype=np.float32)
    if float(np.abs(mono).max()) < SILENCE_PEAK:
        raise AudioError("silent", "the audio is silent (peak under -70 dBFS); upload a recording with music in it")
    waveform = torch.from_numpy(mono)
    if rate != sample_rate:
        waveform = AF.resample(waveform, rate, sample_rate)
    return waveform.contiguous()


def _read(source: AudioSource, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 and the source rate, after the header checks."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError("empty", "the upload is empty (0 bytes); send an audio file")
        handle: io.BytesIO | str = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise AudioError("not_found", f"no audio file at {str(path)!r}")
        if path.stat().st_size == 0:
            raise AudioError("empty", f"{str(path)!r} is empty (0 bytes)")
        handle = str(path)
    try:
        with sf.SoundFile(handle) as f:
            _check_header(f.samplerate, f.channels, f.frames, max_seconds)
            # Read at most one frame past the limit: a file that lies in its header
            # about its length still cannot make us decode hours of audio.
            limit = -1 if max_seconds is None else int(max_seconds * f.samplerate) + 1
            data = f.read(frames=limit, dtype="float32", always_2d=True)
            declared = f.frames
            rate = f.samplerate
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
    if max_seconds is not None and data.shape[0] > max_seconds * rate:
        raise AudioError("too_long", f"the audio is longer than the {max_seconds:g} s limit; send a shorter file")
    # libsndfile pads nothing: fewer frames than the header declares means the file was cut.
    if 0 < declared < 2**62 and data.shape[0] < declared and (max_seconds is None or declared <= max_seconds * rate):
        missing = (declared - data.shape[0]) / rate
        if missing > 0.05:
            raise AudioError(
                "corrupt",
                f"the file is truncated: its header declares {declared / rate:.2f} s but only "
                f"{data.shape[0] / rate:.2f} s could be decoded; re-upload the complete file",
            )
    return data, rate


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
