import io
import struct

import numpy as np
import pytest
import soundfile as sf
import torch

from models.audio import AudioError, decode_audio
from tests.conftest import FORMATS, SAMPLE_RATE, encode, tone


def dominant_frequency(waveform: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform.numpy() * np.hanning(waveform.shape[0])))
    return float(np.fft.rfftfreq(waveform.shape[0], 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_each_format_decodes_from_bytes_and_path(name, tmp_path):
    fmt, subtype, rate = FORMATS[name]
    left = tone(440.0, 3.0, rate)
    stereo = np.stack([left, 0.5 * left], axis=1)
    data = encode(stereo, rate, fmt, subtype)
    path = tmp_path / f"clip.{name}"
    path.write_bytes(data)

    for source in (data, path):
        waveform = decode_audio(source, SAMPLE_RATE)
        assert waveform.dtype == torch.float32 and waveform.ndim == 1
        # lossy codecs add a few ms of encoder delay and padding
        assert abs(waveform.shape[0] / SAMPLE_RATE - 3.0) < 0.1
        assert abs(dominant_frequency(waveform, SAMPLE_RATE) - 440.0) < 3.0
        # the mix-down is the channel mean: 0.75 of the left channel's level (lossy codecs within 10 %)
        rms = float(waveform.pow(2).mean().sqrt())
        assert rms == pytest.approx(0.75 * float(np.sqrt(np.mean(left**2))), rel=0.1)


def test_resampling_keeps_duration_and_pitch():
    waveform = decode_audio(encode(tone(1000.0, 2.0, 48000), 48000, "WAV", "FLOAT"), SAMPLE_RATE)
    assert waveform.shape[0] == 2 * SAMPLE_RATE
    assert abs(dominant_frequency(waveform, SAMPLE_RATE) - 1000.0) < 2.0


def wav_header(rate: int, channels: int, n_frames: int, bits: int = 16) -> bytes:
    block = channels * bits // 8
    data_size = n_frames * block
    return (
        b"RIFF" + struct.pack("<I", 36 + data_size) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, bits)
        + b"data" + struct.pack("<I", data_size)
    )


def good_wav(seconds: float = 2.0) -> bytes:
    return encode(tone(440.0, seconds, 44100), 44100, "WAV", "PCM_16")


def good_flac(seconds: float = 4.0) -> bytes:
    return encode(tone(440.0, seconds, 44100), 44100, "FLAC", "PCM_16")


def float_wav_with(value: float) -> bytes:
    audio = tone(440.0, 2.0, 44100)
    audio[1000] = value
    return encode(audio, 44100, "WAV", "FLOAT")


BAD_INPUTS = {
    "empty": (lambda: b"", "empty"),
    "not audio": (lambda: b"this is a text file, not audio\n" * 100, "unsupported_format"),
    "truncated wav": (lambda: good_wav()[: len(good_wav()) // 2], "corrupt"),
    "truncated flac": (lambda: good_flac()[: len(good_flac()) // 2], "corrupt"),
    "corrupt flac": (lambda: good_flac()[:300] + bytes(range(256)) * 40 + good_flac()[10540:], "corrupt"),
    "zero-length wav": (lambda: wav_header(44100, 1, 0), "no_samples"),
    "too short": (lambda: encode(tone(440.0, 0.2, 44100), 44100, "WAV", "PCM_16"), "too_short"),
    "all silent": (lambda: encode(np.zeros(44100 * 2, np.float32), 44100, "WAV", "PCM_16"), "silent"),
    "nan samples": (lambda: float_wav_with(float("nan")), "non_finite"),
    "inf samples": (lambda: float_wav_with(float("inf")), "non_finite"),
    "1 Hz sample rate": (lambda: wav_header(1, 1, 100) + bytes(200), "bad_sample_rate"),
    "10 MHz sample rate": (lambda: wav_header(10_000_000, 1, 100) + bytes(200), "bad_sample_rate"),
    "nine channels": (lambda: encode(np.tile(tone(440.0, 1.0, 8000)[:, None], (1, 9)), 8000, "WAV", "PCM_16"), "too_many_channels"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_one_typed_error(case):
    make, reason = BAD_INPUTS[case]
    with pytest.raises(AudioError) as caught:
        decode_audio(make(), SAMPLE_RATE, max_seconds=600)
    assert caught.value.reason == reason
    message = str(caught.value)
    assert len(message) > 20 and "0x" not in message  # says what to do, without object addresses


def test_over_the_duration_limit_is_refused_before_decoding_everything():
    data = good_wav(seconds=6.0)
    assert decode_audio(data, SAMPLE_RATE, max_seconds=7).shape[0] == 6 * SAMPLE_RATE
    with pytest.raises(AudioError) as caught:
        decode_audio(data, SAMPLE_RATE, max_seconds=5)
    assert caught.value.reason == "too_long" and "5 s" in str(caught.value)


def test_a_streamed_wav_without_a_size_is_not_called_truncated():
    body = (tone(440.0, 1.0, 44100) * 32767).astype("<i2").tobytes()
    header = bytearray(wav_header(44100, 1, 44100))
    header[40:44] = struct.pack("<I", 0xFFFFFFFF)  # what a streaming writer leaves in the data size
    waveform = decode_audio(bytes(header) + body, SAMPLE_RATE)
    assert abs(waveform.shape[0] - SAMPLE_RATE) <= 1


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(AudioError) as caught:
        decode_audio(tmp_path / "nope.wav", SAMPLE_RATE)
    assert caught.value.reason == "not_found"
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    with pytest.raises(AudioError) as caught:
        decode_audio(empty, SAMPLE_RATE)
    assert caught.value.reason == "empty"


def test_sf_is_the_reader_for_every_listed_format():
    # guards the claim in models/audio.py: the bundled libsndfile reads MP3 and Opus
    formats = sf.available_formats()
    assert {"WAV", "FLAC", "OGG", "MP3"} <= set(formats)
    assert "OPUS" in sf.available_subtypes("OGG")


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 32000, 44100, 48000, 96000])
def test_fast_resampling_equals_torchaudio(rate):
    import torchaudio.functional as AF

    from models.audio import resample

    waveform = torch.from_numpy(tone(523.25, 1.5, rate))
    waveform = waveform + 0.01 * torch.randn(waveform.shape[0], generator=torch.Generator().manual_seed(rate))
    waveform = waveform[: waveform.shape[0] - 7]  # a length that is not a multiple of anything
    expected = AF.resample(waveform, rate, SAMPLE_RATE)
    actual = resample(waveform, rate, SAMPLE_RATE)
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, atol=1e-5)


@pytest.mark.parametrize("rate", [11127, 44101])
def test_rates_without_a_small_ratio_resample_correctly(rate):
    from models.audio import resample

    waveform = resample(torch.from_numpy(tone(1000.0, 3.0, rate, harmonics=1)), rate, SAMPLE_RATE)
    assert waveform.shape[0] == int(np.ceil(3.0 * rate * SAMPLE_RATE / rate))
    assert abs(dominant_frequency(waveform, SAMPLE_RATE) - 1000.0) < 1.0


def test_float_audio_with_huge_finite_samples_is_scaled_not_overflowed(narrow_artifact):
    from models.extractor import load_extractor

    sine = tone(440.0, 8.0)
    huge = encode(sine.astype(np.float64) * 1e25, SAMPLE_RATE, "WAV", "DOUBLE")
    waveform = decode_audio(huge, SAMPLE_RATE)
    assert float(waveform.abs().max()) == pytest.approx(1.0)
    assert torch.allclose(waveform, torch.from_numpy(sine) / float(np.abs(sine).max()), atol=1e-5)
    extractor = load_extractor(narrow_artifact[0], "cpu")
    embeddings = extractor.embed_waveform(extractor.decode(huge))
    assert torch.isfinite(embeddings.vectors).all()


@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
@pytest.mark.parametrize("rate", [SAMPLE_RATE, 44100])
@pytest.mark.parametrize("shape", ["sine", "square"])
def test_loud_stereo_float_audio_is_mixed_down_without_overflow(subtype, rate, shape):
    """Two channels at +-3e38 add up past float32's largest value (3.4e38): the mix-down must not make inf."""
    sine = tone(440.0, 3.0, rate).astype(np.float64)
    wave = sine / np.abs(sine).max() if shape == "sine" else np.sign(sine)
    stereo = np.stack([wave, 0.9 * wave], axis=1)
    loud = encode(stereo * 3e38, rate, "WAV", subtype)
    assert sf.read(io.BytesIO(loud), dtype="float64")[0].max() == pytest.approx(3e38, rel=1e-6)
    waveform = decode_audio(loud, SAMPLE_RATE)
    assert torch.isfinite(waveform).all()
    if rate == SAMPLE_RATE:  # scaled to full scale like any float audio past it (1e25 below); resampling may overshoot
        assert float(waveform.abs().max()) == pytest.approx(1.0, rel=1e-6)
    usual = decode_audio(encode(stereo * 1e25, rate, "WAV", subtype), SAMPLE_RATE)
    assert torch.allclose(waveform, usual, atol=1e-5)


def test_ordinary_levels_are_left_alone():
    quiet = tone(440.0, 4.0, amplitude=0.1)
    waveform = decode_audio(encode(quiet, SAMPLE_RATE, "WAV", "FLOAT"), SAMPLE_RATE)
    assert float(waveform.abs().max()) == pytest.approx(float(np.abs(quiet).max()), rel=1e-5)


@pytest.mark.parametrize("rate", [44100, 48000, 8000, 384000, 44101])
@pytest.mark.parametrize("seconds", [0.3, 7.3])
def test_streaming_resampling_equals_resampling_the_whole(rate, seconds):
    from models.audio import StreamingResampler, resample

    signal = torch.from_numpy(np.random.default_rng(0).standard_normal(int(seconds * rate)).astype(np.float32))
    whole = resample(signal, rate, SAMPLE_RATE)
    streamer = StreamingResampler(rate, SAMPLE_RATE)
    cuts = np.sort(np.random.default_rng(1).integers(0, signal.shape[0], size=12))
    parts = [streamer.push(piece) for piece in np.split(signal, cuts)] + [streamer.finish()]
    streamed = torch.cat(parts)
    assert streamed.shape == whole.shape
    assert torch.allclose(streamed, whole, atol=1e-5)


def test_peak_memory_of_a_decode_does_not_grow_with_rate_and_channels(tmp_path):
    """40 s of 192 kHz 8-channel audio is 245 MB decoded whole; read block by block it costs a few MB."""
    import subprocess
    import sys

    block = np.tile(tone(440.0, 1.0, 192000)[:, None], (1, 8))
    for name, seconds in (("short.flac", 1), ("wide.flac", 40)):
        with sf.SoundFile(tmp_path / name, "w", 192000, 8, format="FLAC", subtype="PCM_16") as out:
            for _ in range(seconds):
                out.write(block)
    probe = (
        "import resource, sys, torch\n"
        "from models.audio import decode_audio\n"
        "decode_audio(sys.argv[1], 22050)  # warm-up on 1 s: kernels and allocator pools, not the long file's peak\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "out = decode_audio(sys.argv[2], 22050)\n"
        "print(out.shape[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "short.flac"), str(tmp_path / "wide.flac")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    samples, grown_kib = map(int, done.stdout.split())
    assert samples == 40 * 22050
    assert grown_kib < 64 * 1024, f"peak RSS grew by {grown_kib / 1024:.0f} MiB"


def silent_flac(rate: int, channels: int, seconds: float) -> bytes:
    """Digital near-silence (one quiet click a second, so it is not refused as silent) compresses to almost nothing."""
    out = io.BytesIO()
    with sf.SoundFile(out, "w", rate, channels, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros((rate, channels), np.float32)
        block[0] = 0.5
        for _ in range(int(seconds)):
            f.write(block)
    return out.getvalue()


def test_a_file_declaring_far_more_frames_than_its_size_is_refused_before_decoding():
    data = silent_flac(192_000, 2, 20)  # 3.84 M frames in about 20 KB
    asked = []
    with pytest.raises(AudioError) as caught:
        decode_audio(data, SAMPLE_RATE, max_seconds=600, should_stop=lambda: asked.append(1) or False)
    assert caught.value.reason == "too_much_audio" and "48 kHz" in str(caught.value)
    assert asked == []  # refused from the header, before the first block


def test_the_first_minute_at_48k_is_always_allowed_however_small_the_file():
    waveform = decode_audio(silent_flac(48_000, 2, 30), SAMPLE_RATE)
    assert abs(waveform.shape[0] - 30 * SAMPLE_RATE) <= 1


def test_rates_over_192k_are_refused():
    with pytest.raises(AudioError) as caught:
        decode_audio(wav_header(384_000, 1, 100) + bytes(200), SAMPLE_RATE)
    assert caught.value.reason == "bad_sample_rate" and "192000" in str(caught.value)


def test_decoding_stops_between_blocks_when_asked():
    from models.audio import DecodeCancelled

    asked = []
    with pytest.raises(DecodeCancelled):
        decode_audio(good_flac(seconds=6.0), SAMPLE_RATE, should_stop=lambda: asked.append(1) or len(asked) > 1)
    assert len(asked) == 2  # the first block was taken, the second refused


def test_high_rates_get_the_duration_limit_at_48k():
    data = encode(tone(440.0, 4.0, 192_000), 192_000, "WAV", "PCM_16")  # 768,000 frames
    assert decode_audio(data, SAMPLE_RATE, max_seconds=16).shape[0] == 4 * SAMPLE_RATE  # 16 s x 48,000 = 768,000
    with pytest.raises(AudioError) as caught:
        decode_audio(data, SAMPLE_RATE, max_seconds=15)  # the 4 s file is within 15 s, but not its frames
    assert caught.value.reason == "too_much_audio"
