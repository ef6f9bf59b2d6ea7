"""Synthesis with fluidsynth, then a recording chain (EQ, reverb, compression, noise, lossy codec)."""

from __future__ import annotations

import io
import os
import resource
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pretty_midi
import soundfile as sf

SOUNDFONTS = {
    "fluidr3": "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "timgm6mb": "/usr/share/sounds/sf2/TimGM6mb.sf2",
}
RENDER_TIMEOUT_S = 60
RENDER_ATTEMPTS = 3  # fluidsynth now and then aborts (SIGABRT) on a file it renders fine the next time
MAX_RENDER_BYTES = 64 * 2**20  # a stuck note cannot fill the disk: fluidsynth is killed past this


class RenderError(RuntimeError):
    pass


def available_soundfonts() -> dict[str, str]:
    found = {name: path for name, path in SOUNDFONTS.items() if os.path.exists(path)}
    if not found:
        raise RenderError("no General MIDI soundfont found; install fluid-soundfont-gm or timgm6mb-soundfont")
    return found


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_RENDER_BYTES, MAX_RENDER_BYTES))


def synthesise(midi: pretty_midi.PrettyMIDI, soundfont: str, sample_rate: int, reverb: bool, work_dir: str) -> np.ndarray:
    """Mono float32 audio of `midi` rendered by fluidsynth with `soundfont` (a path)."""
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        mid, wav = Path(tmp) / "in.mid", Path(tmp) / "out.wav"
        midi.write(str(mid))
        command = ["fluidsynth", "-ni", "-q", "-g", "0.6", "-R", "1" if reverb else "0", "-C", "0",
                   "-r", str(sample_rate), "-F", str(wav), "-T", "wav", "-O", "s16", soundfont, str(mid)]
        _run_fluidsynth(command)
        audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    if rate != sample_rate or audio.shape[0] == 0:
        raise RenderError(f"fluidsynth produced {audio.shape[0]} frames at {rate} Hz")
    return audio.mean(axis=1)


def _run_fluidsynth(command: list[str]) -> None:
    """Run fluidsynth; a run killed by a signal is tried again, up to RENDER_ATTEMPTS in all. An error exit or a
    timeout is not: the same file would fail the same way."""
    for attempt in range(1, RENDER_ATTEMPTS + 1):
        try:
            subprocess.run(command, check=True, timeout=RENDER_TIMEOUT_S, capture_output=True, preexec_fn=_limit_file_size)
            return
        except subprocess.CalledProcessError as err:
            if err.returncode >= 0 or attempt == RENDER_ATTEMPTS:
                stderr = (err.stderr or b"").decode(errors="replace")[-300:]
                raise RenderError(f"fluidsynth failed (attempt {attempt}): {err} {stderr}".rstrip()) from None
        except subprocess.TimeoutExpired as err:
            raise RenderError(f"fluidsynth failed: {err}") from None


def plan_chain(rng: np.random.Generator, clean: bool = False) -> dict:
    """Recording-chain settings; `clean` keeps only a level change."""
    if clean:
        return {"tilt_db": 0.0, "band_db": 0.0, "band_hz": 1000.0, "reverb_s": 0.0, "compress": 0.0,
                "snr_db": None, "codec": None, "level": 0.7}
    return {
        "tilt_db": float(rng.uniform(-8, 8)),
        "band_db": float(rng.uniform(-8, 8)),
        "band_hz": float(np.exp(rng.uniform(np.log(150), np.log(5000)))),
        "reverb_s": float(rng.uniform(0.3, 2.0)) if rng.random() < 0.4 else 0.0,
        "compress": float(rng.uniform(1, 6)) if rng.random() < 0.5 else 0.0,
        "snr_db": float(rng.uniform(8, 35)) if rng.random() < 0.5 else None,
        "codec": str(rng.choice(["mp3", "ogg"])) if rng.random() < 0.15 else None,  # ~0.6 s each: used sparingly
        "level": float(rng.uniform(0.2, 0.9)),
    }


def apply_chain(audio: np.ndarray, sample_rate: int, chain: dict, rng: np.random.Generator) -> np.ndarray:
    out = _equalise(audio, sample_rate, chain["tilt_db"], chain["band_db"], chain["band_hz"])
    if chain["reverb_s"] > 0:
        out = _reverb(out, sample_rate, chain["reverb_s"], rng)
    if chain["compress"] > 0:
        peak = np.abs(out).max() + 1e-9
        out = np.tanh(chain["compress"] * out / peak) / np.tanh(chain["compress"])
    if chain["snr_db"] is not None:
        out = out + _noise(out, chain["snr_db"], rng)
    out = (chain["level"] * out / (np.abs(out).max() + 1e-9)).astype(np.float32)
    if chain["codec"]:
        out = _lossy(out, sample_rate, chain["codec"])
    return out.astype(np.float32)


def _fft_size(n: int) -> int:
    return 1 << (n - 1).bit_length()  # a power of two: odd lengths make numpy's FFT ~10x slower


def _equalise(audio: np.ndarray, sample_rate: int, tilt_db: float, band_db: float, band_hz: float) -> np.ndarray:
    size = _fft_size(audio.shape[0])
    spectrum = np.fft.rfft(audio, size)
    freqs = np.fft.rfftfreq(size, 1 / sample_rate)
    octaves = np.log2(np.maximum(freqs, 20.0) / 1000.0)
    gain_db = tilt_db * octaves / 5.0 + band_db * np.exp(-0.5 * (np.log2(np.maximum(freqs, 20.0) / band_hz) / 0.5) ** 2)
    return np.fft.irfft(spectrum * 10 ** (gain_db / 20), size)[: audio.shape[0]]


def _reverb(audio: np.ndarray, sample_rate: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    length = int(rt60 * sample_rate)
    t = np.arange(length) / sample_rate
    impulse = rng.standard_normal(length) * np.exp(-6.9 * t / rt60)
    impulse[0] = 1.0 / 0.3  # the direct sound dominates
    size = _fft_size(audio.shape[0] + length - 1)
    wet = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(impulse, size), size)[: audio.shape[0]]
    return wet


def _noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(audio.shape[0])
    if rng.random() < 0.5:  # pink: 1/f power
        size = _fft_size(audio.shape[0])
        spectrum = np.fft.rfft(white, size)
        spectrum /= np.sqrt(np.maximum(np.arange(spectrum.shape[0]), 1))
        white = np.fft.irfft(spectrum, size)[: audio.shape[0]]
    signal_power = np.mean(audio**2) + 1e-12
    return white * np.sqrt(signal_power / (np.mean(white**2) + 1e-12) / 10 ** (snr_db / 10))


WRITE_BLOCK_FRAMES = 2**16


def write_audio(target, audio: np.ndarray, sample_rate: int, fmt: str, subtype: str) -> None:
    """Encode mono `audio` to a path or file object, a block at a time.

    libsndfile 1.2.2 crashes the process (SIGSEGV) encoding Vorbis from one write call of about
    2 million frames or more (a 96 s version at 22,050 Hz did); blocks of 65,536 frames do not.
    """
    with sf.SoundFile(target, "w", sample_rate, 1, format=fmt, subtype=subtype) as out:
        for first in range(0, len(audio), WRITE_BLOCK_FRAMES):
            out.write(audio[first : first + WRITE_BLOCK_FRAMES])


def _lossy(audio: np.ndarray, sample_rate: int, codec: str) -> np.ndarray:
    fmt, subtype = ("MP3", "MPEG_LAYER_III") if codec == "mp3" else ("OGG", "VORBIS")
    buffer = io.BytesIO()
    write_audio(buffer, audio, sample_rate, fmt, subtype)
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32")
    out = np.zeros_like(audio)
    out[: min(len(audio), len(decoded))] = decoded[: len(audio)]
    return out
