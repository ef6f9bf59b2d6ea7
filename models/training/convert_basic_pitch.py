"""Build time only: basic-pitch 0.4.0's nmp.onnx -> the weight file `models.basic_pitch` loads, and the test fixture.

    pip download --no-deps basic-pitch==0.4.0 -d /tmp/bp
    python -m models.training.convert_basic_pitch --wheel /tmp/bp/basic_pitch-0.4.0-py2.py3-none-any.whl
    python -m models.training.convert_basic_pitch --wheel ... --fixture   # also the onnxruntime reference outputs

Reads the model and its LICENSE and NOTICE straight from the wheel (never installs it: it
would pull TensorFlow). Needs `onnx` (and `onnxruntime` for --fixture); serving needs neither,
and this module imports them only inside the functions that use them.

Conversion checks the graph against the port instead of trusting names: every learnt
tensor is found by the convolution it feeds (kernel shape and channels) and must have the
stride and padding of the matching layer in `BasicPitch`; every fixed constant (CQT
kernels, low-pass, bin scaling, log floor) must equal the one `models.basic_pitch`
recomputes, bit for bit.
"""

import argparse
import hashlib
import json
import sys
import zipfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from index.common import replaced_atomically
from models import basic_pitch as bp

SOURCE_PACKAGE = "basic-pitch"
SOURCE_VERSION = "0.4.0"
SOURCE_FILE = "saved_models/icassp_2022/nmp.onnx"
DIST_INFO = f"basic_pitch-{SOURCE_VERSION}.dist-info"
LICENCE = "Apache-2.0"
ONNX_INPUT = "serving_default_input_2:0"
ONNX_OUTPUTS = {  # as basic-pitch's inference.py names them
    "notes": "StatefulPartitionedCall:1",
    "onsets": "StatefulPartitionedCall:2",
    "contour": "StatefulPartitionedCall:0",
}

# (kernel (time, frequency), output channels, input channels) of each learnt convolution -> its layer in BasicPitch
CONVOLUTIONS = {
    ((3, 39), 8, 8): "contour_conv",
    ((5, 5), 1, 8): "contour_out",
    ((7, 7), 32, 1): "note_conv",
    ((7, 3), 1, 32): "note_out",
    ((5, 5), 32, 8): "onset_conv",
    ((3, 3), 1, 33): "onset_out",
}
CQT_KERNEL_SHAPE = (1, 256)
BATCH_NORM = "model_1/batch_normalization/FusedBatchNormV3"  # the one after the normalised log
LOG_FLOOR_NAME = "model_1/normalized_log_1/add/y"
CQT_SCALE_NAME = "model_1/cq_t2010v2_1/Sqrt"

FIXTURE = Path(__file__).parents[2] / "tests" / "models" / "fixtures" / "basic_pitch_reference.npz"
LONG_SAMPLES = 80_000  # 313 frames in three windows: the first, one in the middle, a last one cut short
SIGNAL_STRIDE = 97  # the fixture keeps every 97th input sample, to tell a changed signal from a changed model


class ConversionError(ValueError):
    """nmp.onnx is not the graph this port was written for."""


# -- reading the wheel ----------------------------------------------------------------------
def read_wheel(wheel: Path) -> Dict[str, bytes]:
    """The model, LICENSE and NOTICE from the basic-pitch wheel, after checking its version."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"{DIST_INFO}/METADATA").decode()
        if f"\nVersion: {SOURCE_VERSION}\n" not in metadata:
            raise ConversionError(f"{wheel} is not {SOURCE_PACKAGE}=={SOURCE_VERSION}; download it with "
                                  f"pip download --no-deps {SOURCE_PACKAGE}=={SOURCE_VERSION}")
        return {
            "onnx": archive.read(f"basic_pitch/{SOURCE_FILE}"),
            "LICENSE": archive.read(f"{DIST_INFO}/LICENSE"),
            "NOTICE": archive.read(f"{DIST_INFO}/NOTICE"),
        }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the weights ----------------------------------------------------------------------------
def _initializers(model) -> Dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _by_prefix(initializers: Dict[str, np.ndarray], prefix: str) -> np.ndarray:
    """tf2onnx names a tensor 'a;a' or 'a;a1' after the TF op(s) it folds; match on the first part."""
    found = [v for k, v in initializers.items() if k.split(";")[0] == prefix]
    if len(found) != 1:
        raise ConversionError(f"expected one initializer named {prefix!r}, found {len(found)}")
    return found[0]


def _check_equal(name: str, stored: np.ndarray, recomputed: np.ndarray) -> None:
    stored = np.asarray(stored, dtype=np.float32).reshape(-1)
    recomputed = np.asarray(recomputed, dtype=np.float32).reshape(-1)
    if stored.shape != recomputed.shape or not np.array_equal(stored, recomputed):
        raise ConversionError(f"{name}: the ONNX constant differs from the one models/basic_pitch.py computes")


def onnx_state_dict(onnx_bytes: bytes) -> Dict[str, torch.Tensor]:
    """The learnt tensors of nmp.onnx as a `BasicPitch` state dict, after checking the fixed constants."""
    import onnx

    model = onnx.load_model_from_string(onnx_bytes)
    initializers = _initializers(model)
    port = bp.BasicPitch()
    state: Dict[str, torch.Tensor] = {}
    cqt_kernels: List[np.ndarray] = []
    lowpass: List[np.ndarray] = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight, bias = initializers[node.input[1]], initializers[node.input[2]]
        kernel = tuple(attributes["kernel_shape"])
        if kernel == CQT_KERNEL_SHAPE:
            (lowpass if weight.shape[0] == 1 else cqt_kernels).append(weight.reshape(weight.shape[0], -1))
            _check_equal("CQT bias", bias, np.zeros_like(bias))
            continue
        layer_name = CONVOLUTIONS.get((kernel, weight.shape[0], weight.shape[1]))
        if layer_name is None:
            raise ConversionError(f"unexpected convolution {node.name!r}: kernel {kernel}, weight {weight.shape}")
        layer = getattr(port, layer_name)
        pads = [layer.padding[0], layer.padding[1]] * 2
        if list(attributes["strides"]) != list(layer.stride) or list(attributes.get("pads", [0] * 4)) != pads:
            raise ConversionError(f"{layer_name}: ONNX strides {attributes['strides']} pads {attributes.get('pads')}, "
                                  f"port strides {layer.stride} pads {pads}")
        state[f"{layer_name}.weight"] = torch.from_numpy(weight.copy())
        state[f"{layer_name}.bias"] = torch.from_numpy(bias.copy())
    missing = sorted(set(CONVOLUTIONS.values()) - {k.split(".")[0] for k in state})
    if missing:
        raise ConversionError(f"no convolution found for {missing}")

    kernels = bp.cqt_kernels()
    distinct: List[np.ndarray] = []
    for k in cqt_kernels:
        if not any(np.array_equal(k, d) for d in distinct):
            distinct.append(k)
    if len(cqt_kernels) != 2 * bp.CQT_OCTAVES or len(distinct) != 2:
        raise ConversionError(f"expected the same real and imaginary kernels at each of {bp.CQT_OCTAVES} octaves")
    real, imag = distinct if np.array_equal(distinct[0], kernels.real.astype(np.float32)) else distinct[::-1]
    _check_equal("CQT kernels (real)", real, kernels.real)
    _check_equal("CQT kernels (imaginary)", imag, kernels.imag)
    if len(lowpass) != bp.CQT_OCTAVES - 1:
        raise ConversionError(f"expected {bp.CQT_OCTAVES - 1} halvings, found {len(lowpass)}")
    for taps in lowpass:
        _check_equal("low-pass filter", taps, bp.lowpass_filter())
    _check_equal("CQT bin scaling", _by_prefix(initializers, CQT_SCALE_NAME), bp.cqt_scale())
    _check_equal("log floor", _by_prefix(initializers, LOG_FLOOR_NAME), [bp.LOG_FLOOR])

    # the batch norm after the normalised log, folded by TF: a Mul by its scale, then an Add of its shift
    for node in model.graph.node:
        constants = [name for name in node.input if name in initializers and name.split(";")[0] == BATCH_NORM]
        if node.op_type in ("Mul", "Add") and constants:
            value = torch.from_numpy(initializers[constants[0]].reshape(1).copy())
            state["input_scale" if node.op_type == "Mul" else "input_shift"] = value

    expected = set(port.state_dict())
    if set(state) != expected:
        raise ConversionError(
            f"state dict keys differ: missing {sorted(expected - set(state))}, extra {sorted(set(state) - expected)}"
        )
    return state


def header(sources: Dict[str, bytes], wheel: Path, state: Dict[str, torch.Tensor]) -> dict:
    return {
        "model": "basic-pitch ICASSP 2022 note/contour model (nmp)",
        "source_package": f"{SOURCE_PACKAGE}=={SOURCE_VERSION}",
        "source_file": SOURCE_FILE,
        "source_sha256": sha256(sources["onnx"]),
        "wheel": wheel.name,
        "wheel_sha256": sha256(wheel.read_bytes()),
        "licence": LICENCE,
        "copyright": "Copyright 2022 Spotify AB",
        "converted_by": "models/training/convert_basic_pitch.py",
        "architecture": bp.architecture(),
        "weights_sha256": bp.state_dict_sha256(state),
    }


def write_weights(wheel: Path, out: Path = bp.DEFAULT_WEIGHTS) -> dict:
    """Converts, writes the weight file plus LICENSE and NOTICE beside it; returns the header."""
    sources = read_wheel(wheel)
    state = onnx_state_dict(sources["onnx"])
    stored = header(sources, wheel, state)
    out.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(out) as file:
        torch.save({"header": stored, "state_dict": state}, file)
    (out.parent / "LICENSE").write_bytes(sources["LICENSE"])
    (out.parent / "NOTICE").write_bytes(sources["NOTICE"])
    return stored


# -- the reference fixture --------------------------------------------------------------------
def reference_signal(n_samples: int, seed: int) -> np.ndarray:
    """(n_samples,) float32 test audio at 22,050 Hz: a held bass note, a melody of harmonic tones
    (0.15 to 0.5 s each, about a third with vibrato), and white noise 40 dB down."""
    rng = np.random.RandomState(seed)  # the legacy generator: its stream is fixed across numpy versions
    t = np.arange(n_samples) / bp.SAMPLE_RATE
    out = np.zeros(n_samples)

    def partials(freq: np.ndarray | float, phase: np.ndarray) -> np.ndarray:
        return sum(0.6**k * np.sin((k + 1) * phase) for k in range(4) if (k + 1) * np.max(freq) < bp.SAMPLE_RATE / 2)

    bass = 440.0 * 2 ** ((36 + rng.randint(12) - 69) / 12)
    out += 0.15 * partials(bass, 2 * np.pi * bass * t)
    start = 0
    while start < n_samples:
        length = int((0.15 + 0.35 * rng.rand()) * bp.SAMPLE_RATE)
        pitch = 55 + rng.randint(30)
        local = np.arange(min(length, n_samples - start)) / bp.SAMPLE_RATE
        vibrato = 0.01 * np.sin(2 * np.pi * 5.5 * local) if rng.rand() < 0.3 else 0.0
        freq = 440.0 * 2 ** ((pitch - 69) / 12) * (1 + vibrato)
        phase = 2 * np.pi * np.cumsum(freq) / bp.SAMPLE_RATE
        envelope = np.minimum(1.0, local / 0.01) * np.exp(-2.0 * local)
        out[start : start + local.size] += 0.3 * envelope * partials(freq, phase)
        start += length
    out += 0.01 * rng.randn(n_samples)
    return out.astype(np.float32)


def onnx_session(onnx_bytes: bytes):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def onnx_window(session, window: np.ndarray) -> Dict[str, np.ndarray]:
    """(WINDOW_SAMPLES,) -> name -> (WINDOW_FRAMES, bins), straight from nmp.onnx."""
    results = session.run(list(ONNX_OUTPUTS.values()), {ONNX_INPUT: window.reshape(1, -1, 1).astype(np.float32)})
    return {name: value[0] for name, value in zip(ONNX_OUTPUTS, results)}


def onnx_track(session, signal: np.ndarray) -> Dict[str, np.ndarray]:
    """A whole track the way `BasicPitch.forward` defines it, written as a plain loop: global frame f
    (centred on sample 256 f) comes from the window whose kept middle holds it."""
    n_frames = bp.frame_count(signal.size)
    out: Dict[str, np.ndarray] = {}
    for first in range(0, n_frames, bp.KEPT_FRAMES):
        start = (first - bp.EDGE_FRAMES) * bp.HOP  # window's first sample; negative before the track
        window = np.zeros(bp.WINDOW_SAMPLES, dtype=np.float32)
        lo, hi = max(start, 0), min(start + bp.WINDOW_SAMPLES, signal.size)
        window[lo - start : hi - start] = signal[lo:hi]
        take = min(bp.KEPT_FRAMES, n_frames - first)
        for name, value in onnx_window(session, window).items():
            out.setdefault(name, np.zeros((n_frames, value.shape[1]), dtype=np.float32))
            out[name][first : first + take] = value[bp.EDGE_FRAMES : bp.EDGE_FRAMES + take]
    return out


def write_fixture(onnx_bytes: bytes, path: Path = FIXTURE) -> None:
    """onnxruntime's outputs for one window (seed 0) and an 80,000-sample track (seed 1), as float16."""
    import onnxruntime

    session = onnx_session(onnx_bytes)
    window = reference_signal(bp.WINDOW_SAMPLES, seed=0)
    track = reference_signal(LONG_SAMPLES, seed=1)
    arrays = {}
    for prefix, signal, outputs in (
        ("window", window, onnx_window(session, window)),
        ("track", track, onnx_track(session, track)),
    ):
        arrays[f"{prefix}_signal_samples"] = signal[::SIGNAL_STRIDE]
        for name, value in outputs.items():
            arrays[f"{prefix}_{name}"] = value.astype(np.float16)
    arrays["info"] = np.array(json.dumps({
        "source_package": f"{SOURCE_PACKAGE}=={SOURCE_VERSION}",
        "source_sha256": sha256(onnx_bytes),
        "onnxruntime": onnxruntime.__version__,
        "signals": {"window": [bp.WINDOW_SAMPLES, 0], "track": [LONG_SAMPLES, 1]},
        "signal_stride": SIGNAL_STRIDE,
    }))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, required=True, help=f"the {SOURCE_PACKAGE}=={SOURCE_VERSION} wheel")
    parser.add_argument("--out", type=Path, default=bp.DEFAULT_WEIGHTS)
    parser.add_argument("--fixture", action="store_true", help=f"also write {FIXTURE.name} with onnxruntime")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    stored = write_weights(args.wheel, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, file sha256 {sha256(args.out.read_bytes())})")
    print(json.dumps(stored, indent=2))
    if args.fixture:
        write_fixture(read_wheel(args.wheel)["onnx"])
        print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
