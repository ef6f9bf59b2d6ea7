"""A tiny real training run: rendered works, a few steps, the loss goes down, resume is exact."""

import json

import pytest
import torch

from models.config import ExtractorConfig
from models.training.corpus.build import build, plan_jobs
from models.training.corpus.works import procedural_works
from models.training.dataset import BatchPlan, FeatureCorpus
from models.training.train import TrainConfig, load_checkpoint, train


TINY = ExtractorConfig(width=8)
PLAN = BatchPlan(works_per_batch=4, versions_per_work=2, min_crop_seconds=6.0, max_crop_seconds=14.0)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("corpus")
    done, errors = build(plan_jobs(procedural_works(5, seed=11), 3, 0, 24.0), cache, TINY, workers=2)
    assert not errors
    return cache


@pytest.fixture(scope="module")
def tiny_corpus(tiny_cache):
    return FeatureCorpus.from_cache(tiny_cache, "train")


def test_a_cache_of_other_features_is_refused_for_training(tiny_cache):
    assert FeatureCorpus.from_cache(tiny_cache, "train", expect=TINY).summary()["versions"] == 15
    with pytest.raises(ValueError, match="coverid corpus --features pitch"):
        FeatureCorpus.from_cache(tiny_cache, "train", expect=TINY.replace(features="pitch"))


def losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if "loss" in r]


def test_loss_decreases_on_a_handful_of_rendered_works(tiny_corpus, tmp_path):
    assert tiny_corpus.summary() == {"works": 5, "versions": 15}
    config = TrainConfig(steps=16, lr=1e-3, log_every=1, checkpoint_every=8, batch=PLAN)
    checkpoint = train(tiny_corpus, TINY, config, tmp_path / "run")
    history = losses(tmp_path / "run")
    assert len(history) == 16
    assert sum(history[-4:]) / 4 < sum(history[:4]) / 4
    network, model_config, state = load_checkpoint(checkpoint)
    assert model_config == TINY and state["step"] == 16 and state["corpus"]["works"] == 5


def test_resuming_continues_exactly(tiny_corpus, tmp_path):
    config = TrainConfig(steps=6, log_every=1, checkpoint_every=3, batch=PLAN, seed=3)
    train(tiny_corpus, TINY, config, tmp_path / "straight")
    halfway = TrainConfig(**{**config.__dict__, "steps": 3})
    train(tiny_corpus, TINY, halfway, tmp_path / "resumed")
    train(tiny_corpus, TINY, config, tmp_path / "resumed")  # picks up at step 3
    a, _, _ = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b, _, _ = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x.float(), y.float(), atol=1e-5), name
    assert losses(tmp_path / "straight") == pytest.approx(losses(tmp_path / "resumed"), abs=1e-4)


def test_the_global_baseline_trains_with_the_same_code(tiny_corpus, tmp_path):
    from models.training.train import global_config, network_embedder

    config = global_config(TINY)
    train(tiny_corpus, config, TrainConfig(steps=3, log_every=1, batch=PLAN, proxy_length=1), tmp_path / "global")
    network, stored, _ = load_checkpoint(tmp_path / "global" / "checkpoint.pt")
    assert stored.chunk_seconds == 3600.0
    vectors = network_embedder(network, stored)(torch.from_numpy(tiny_corpus.versions[0][0]))
    assert vectors.shape == (1, 512)  # one embedding for the whole track


def test_a_time_budget_stops_early_with_a_checkpoint(tiny_corpus, tmp_path):
    train(tiny_corpus, TINY, TrainConfig(steps=1000, log_every=1, batch=PLAN, max_minutes=0.0), tmp_path / "budget")
    _, _, state = load_checkpoint(tmp_path / "budget" / "checkpoint.pt")
    assert state["step"] == 1


def test_real_recordings_load_from_a_csv_and_are_cached(tmp_path):
    import soundfile as sf

    from tests.conftest import tune

    rows = ["work_id,performance_id,path"]
    for work in range(2):
        for take in range(2):
            path = tmp_path / "audio" / f"w{work}-t{take}.flac"
            path.parent.mkdir(exist_ok=True)
            sf.write(path, tune(8.0 + take, seed=work), 22050)
            rows.append(f"song{work},song{work}-take{take},audio/{path.name}")
    table = tmp_path / "covers.csv"
    table.write_text("\n".join(rows) + "\n")
    corpus = FeatureCorpus.from_csv(table, TINY, tmp_path / "cache")
    assert corpus.work_ids == ["song0", "song1"] and corpus.summary()["versions"] == 4
    assert corpus.versions[0][1].shape == (84, int(9.0 * 22050) // 512 + 1)
    cached = sorted((tmp_path / "cache" / "features").rglob("*.npy"))
    assert len(cached) == 4
    (tmp_path / "audio" / "w0-t0.flac").unlink()  # a second load reads the cache, not the audio
    assert FeatureCorpus.from_csv(table, TINY, tmp_path / "cache").summary()["versions"] == 4


def test_embed_batch_runs_groups_of_one_chunk_in_training_mode():
    """The global model gives every sample one chunk of its own length: each group is one chunk."""
    from models.training.dataset import Batch
    from models.network import ResNetIBN
    from models.training.train import embed_batch

    torch.manual_seed(0)
    network = ResNetIBN(width=8)
    chunks = [torch.randn(1, 1, 84, 30), torch.randn(2, 1, 84, 41), torch.randn(1, 1, 84, 52)]
    owners = [torch.tensor([0]), torch.tensor([1, 1]), torch.tensor([2])]
    batch = Batch(chunks, owners, torch.tensor([0, 1, 2]))
    network.train()
    embeddings, mask = embed_batch(network, batch, torch.device("cpu"))
    assert embeddings.shape == (3, 2, 512)
    assert mask.tolist() == [[True, False], [True, True], [True, False]]
    network.eval()  # running statistics: grouping no longer matters, so compare with plain calls
    embeddings, _ = embed_batch(network, batch, torch.device("cpu"))
    with torch.no_grad():
        assert torch.allclose(embeddings[0, :1], network(chunks[0]), atol=1e-5)
        assert torch.allclose(embeddings[1], network(chunks[1]), atol=1e-5)
        assert torch.allclose(embeddings[2, :1], network(chunks[2]), atol=1e-5)


def test_fine_tuning_starts_from_the_network_of_another_run(tiny_corpus, tmp_path):
    train(tiny_corpus, TINY, TrainConfig(steps=2, batch=PLAN), tmp_path / "first")
    source, _, _ = load_checkpoint(tmp_path / "first" / "checkpoint.pt")
    frozen = TrainConfig(steps=1, lr=0.0, batch=PLAN, init_from=str(tmp_path / "first" / "checkpoint.pt"))
    train(tiny_corpus, TINY, frozen, tmp_path / "tuned")  # lr 0: the weights stay those it started from
    tuned, _, _ = load_checkpoint(tmp_path / "tuned" / "checkpoint.pt")
    for (name, x), (_, y) in zip(source.state_dict().items(), tuned.state_dict().items()):
        if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):  # BN statistics still move
            assert torch.equal(x, y), name
    other = ExtractorConfig(width=8, time_pool=100)
    with pytest.raises(ValueError, match="other model settings"):
        train(tiny_corpus, other, frozen, tmp_path / "mismatch")
    with pytest.raises(ValueError, match="other model settings"):  # resuming a run with other settings
        train(tiny_corpus, other, TrainConfig(steps=3, batch=PLAN), tmp_path / "first")


def test_corpora_concatenate_but_never_share_a_work(tiny_corpus):
    from models.training.dataset import FeatureCorpus

    half = len(tiny_corpus.work_ids) // 2
    a = FeatureCorpus(tiny_corpus.work_ids[:half], tiny_corpus.versions[:half])
    b = FeatureCorpus(tiny_corpus.work_ids[half:], tiny_corpus.versions[half:])
    assert FeatureCorpus.concat([a, b]).summary() == tiny_corpus.summary()
    with pytest.raises(ValueError, match="share work ids"):
        FeatureCorpus.concat([a, a])
