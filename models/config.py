"""Every setting an extractor is built with, in one place.

The config travels inside the exported artifact (see `models.extractor`), so the
service and the evaluation read hyperparameters from the model instead of
restating them. Derived quantities are properties, never stored twice.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

FORMAT_VERSION = 1  # bump when the meaning of a field changes
# network input kinds: the CQT (84 bins), or 88 notes (MIDI 21..108) from basic-pitch or the pitch student
FEATURES = ("cqt", "pitch", "student")
# what turns a chunk into its local embedding: the ResNet-IBN (learnt, ByteCover3) or the 2D Fourier magnitude
# of its pitch classes (no learning beyond a fitted projection; models/fourier.py)
HEADS = ("resnet", "2dftm")
FRONT_END_FIELDS = ("features", "sample_rate", "cqt_bins", "cqt_bins_per_octave", "cqt_fmin", "cqt_hop", "cqt_window")


@dataclass(frozen=True)
class ExtractorConfig:
    # audio and chunking (ByteCover3 section 2.1)
    sample_rate: int = 22050
    chunk_seconds: float = 20.0
    hop_seconds: float = 10.0
    # CQT: 7 octaves of 12 bins from C1, hop 512, Hann window, magnitude
    cqt_bins: int = 84
    cqt_bins_per_octave: int = 12
    cqt_fmin: float = 32.70
    cqt_hop: int = 512
    cqt_window: str = "hann"
    # what the network sees, on the CQT's frame grid: "cqt" (the paper's log-CQT) or "pitch" (basic-pitch's
    # note posteriorgram, a pitch salience learnt from real recordings, so timbre matters far less;
    # see models/basic_pitch.py and the model card) or "student" (a small network on the CQT distilled
    # from basic-pitch, models/pitch_student.py: the same kind of input for a few ms)
    features: str = "cqt"
    # with features "student": the id of the student's weights (models/weights/pitch_student/)
    pitch_student_id: str = ""
    # with note features: fold each chunk's 88 notes into 12 pitch classes (stacked three times, 36 rows)
    # before the network (covers change register and voicing; chroma is what the no-learning baselines that
    # work on real covers read)
    fold_octaves: bool = False
    # average-pooling factor along time after the CQT; the paper says 100,
    # ByteCover/CQTNet use 20. Chosen by validation (see the model card).
    time_pool: int = 20
    # per-chunk normalisation: divide by the chunk's max, then log1p(gain * x) / log1p(gain); 0: no compression
    log_gain: float = 100.0
    # the embedding head; with "2dftm": patch length in (pooled) frames and the power on max-scaled pitch classes
    head: str = "resnet"
    patch_frames: int = 48
    fourier_power: float = 1.96
    # stage 3: the pitch-class sequence stored with each track and aligned with a query's, pooled by this
    # factor along time (18: 2.4 frames/s) and kept as uint8
    sequence_pool: int = 18
    # network: ResNet50-IBN, base width 64 gives C = 2048 channels (the paper)
    width: int = 64
    embedding_dim: int = 512
    # chunks per network call: bounds memory for long tracks
    max_batch_chunks: int = 32
    # identity of the weights
    model_version: str = "untrained"
    training_data: str = "none"
    model_id: str = ""  # filled at export from a hash of the weights
    format_version: int = FORMAT_VERSION
    # stage 3 (alignment of the stage-2 top N, fused with MaxMean): index.fusion.FusionSettings and
    # index.alignment.AlignmentSettings fields; empty: no stage 3 (see models.extractor.stage3_settings)
    stage3: dict = field(default_factory=dict, compare=False)
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if self.cqt_bins % self.cqt_bins_per_octave:
            problems.append(f"cqt_bins={self.cqt_bins} must be a whole number of octaves of {self.cqt_bins_per_octave}")
        elif self.cqt_hop % (2 ** (self.n_octaves - 1)):
            problems.append(f"cqt_hop={self.cqt_hop} must be divisible by 2**(octaves-1)={2 ** (self.n_octaves - 1)}")
        if not 0 < self.hop_seconds <= self.chunk_seconds:
            problems.append(f"hop_seconds={self.hop_seconds} must be in (0, chunk_seconds={self.chunk_seconds}]")
        if self.features not in FEATURES:
            problems.append(f"features={self.features!r} must be one of {sorted(FEATURES)}")
        if (self.features == "student") != bool(self.pitch_student_id):
            problems.append("pitch_student_id must be set exactly when features='student' "
                            f"(features={self.features!r}, pitch_student_id={self.pitch_student_id!r})")
        if self.fold_octaves and self.features == "cqt":
            problems.append("fold_octaves needs note features ('pitch' or 'student'), not 'cqt'")
        if self.head not in HEADS:
            problems.append(f"head={self.head!r} must be one of {list(HEADS)}")
        if self.head == "2dftm" and (self.features == "cqt" or self.fold_octaves):
            problems.append("head '2dftm' reads the 88 notes of 'pitch' or 'student' features, unfolded "
                            f"(features={self.features!r}, fold_octaves={self.fold_octaves})")
        if self.sequence_pool < 1:
            problems.append(f"sequence_pool={self.sequence_pool} must be >= 1")
        if self.patch_frames < 2:
            problems.append(f"patch_frames={self.patch_frames} must be >= 2")
        if self.log_gain < 0:
            problems.append(f"log_gain={self.log_gain} must be >= 0")
        if self.time_pool < 1:
            problems.append(f"time_pool={self.time_pool} must be >= 1")
        if self.width < 4 or self.width % 2:
            problems.append(f"width={self.width} must be an even number >= 4")
        if self.cqt_fmin * 2 ** (self.cqt_bins / self.cqt_bins_per_octave) >= self.sample_rate / 2:
            problems.append("the top CQT bin is above the Nyquist frequency")
        if problems:
            raise ValueError("invalid extractor config: " + "; ".join(problems))

    # -- derived quantities ------------------------------------------------
    @property
    def n_octaves(self) -> int:
        return self.cqt_bins // self.cqt_bins_per_octave

    @property
    def frame_seconds(self) -> float:
        """Seconds between two CQT frames before pooling."""
        return self.cqt_hop / self.sample_rate

    @property
    def frames_per_chunk(self) -> int:
        """CQT frames of one full chunk: what a centred CQT of a lone 20 s chunk yields."""
        return math.floor(self.chunk_seconds * self.sample_rate) // self.cqt_hop + 1

    def front_end_settings(self) -> dict:
        """The settings that decide `FrontEnd.spectrogram`'s output: caches of it are keyed by these."""
        settings = {key: getattr(self, key) for key in FRONT_END_FIELDS}
        if self.features == "student":
            settings["pitch_student_id"] = self.pitch_student_id
        return settings

    @property
    def sequence_frame_seconds(self) -> float:
        """Seconds between two frames of the stored pitch-class sequence."""
        return self.frame_seconds * self.sequence_pool

    @property
    def hop_frames(self) -> float:
        return self.hop_seconds / self.frame_seconds

    @property
    def channels(self) -> int:
        """Channels C before the PCA-FC reduction (ResNet50 bottleneck expansion 4 x 8 x width)."""
        return self.width * 32

    # -- serialisation -------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "ExtractorConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown extractor config fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "ExtractorConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> "ExtractorConfig":
        return dataclasses.replace(self, **changes)


def config_mismatches(actual: dict, expected: dict) -> list[str]:
    """Human-readable differences for the keys of `expected` (used to refuse artifacts)."""
    out = []
    for key, want in expected.items():
        have = actual.get(key, "<missing>")
        if have != want:
            out.append(f"{key}: artifact has {have!r}, expected {want!r}")
    return out
