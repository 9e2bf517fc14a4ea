import numpy as np
import pytest
import torch

from optishear_moo.data import calibration_diversity, load_calibration, load_corpus, tokenize_text
from optishear_moo.data.cluster_sampling import (
    candidate_windows,
    cluster_embeddings,
    draw_across_clusters,
    hidden_state_embedder,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "books.txt"
    path.write_text(load_corpus("gutenberg")[:150_000])
    return str(path)


def test_cluster_sampling_is_seeded_and_covers_every_cluster(tiny_tokenizer, tiny_llama, source):
    kwargs = dict(n_samples=8, seq_len=32, sampling="cluster", n_clusters=4, model=tiny_llama, seed=1,
                  source=source)
    a = load_calibration(tiny_tokenizer, **kwargs)
    b = load_calibration(tiny_tokenizer, **kwargs)
    c = load_calibration(tiny_tokenizer, **{**kwargs, "seed": 2})
    assert a.shape == (8, 32) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the same pool and clustering, rebuilt by hand: every cluster gives exactly 2 windows
    tokens = tokenize_text(tiny_tokenizer, open(source).read())
    pool = candidate_windows(tokens, 32, 32, seed=1)
    embed = hidden_state_embedder(tiny_llama)
    kmeans = cluster_embeddings(embed(pool), 4, seed=1)
    chosen = [next(i for i, w in enumerate(pool) if torch.equal(w, row)) for row in a]
    assert sorted(np.bincount(kmeans.labels_[chosen], minlength=4).tolist()) == [2, 2, 2, 2]


def test_draw_across_clusters_moves_the_shortfall_of_small_clusters():
    labels = np.array([0] * 10 + [1] * 1 + [2] * 10)
    picked = draw_across_clusters(labels, 9, seed=0)
    counts = np.bincount(labels[picked], minlength=3)
    assert len(set(picked.tolist())) == 9 and counts[1] == 1 and sorted(counts[[0, 2]]) == [4, 4]
    with pytest.raises(ValueError, match="pool"):
        draw_across_clusters(labels, 30, seed=0)


def test_any_callable_embedder_and_diversity_beats_a_degenerate_sample(tiny_tokenizer, source):
    def bag_of_tokens(windows):  # a cheap embedder: token histograms
        return np.stack([np.bincount(w.numpy(), minlength=400) for w in windows]).astype(float)

    diverse = load_calibration(tiny_tokenizer, n_samples=8, seq_len=32, sampling="cluster",
                               n_clusters=8, embedder=bag_of_tokens, source=source)
    degenerate = diverse[:1].repeat(8, 1)  # one window eight times
    report = calibration_diversity(diverse, tiny_tokenizer, embedder=bag_of_tokens, n_clusters=8,
                                   source=source)
    flat = calibration_diversity(degenerate, tiny_tokenizer, embedder=bag_of_tokens, n_clusters=8,
                                   source=source)
    assert flat.mean_pairwise_distance == pytest.approx(0.0, abs=1e-9)
    assert report.mean_pairwise_distance > 0.05
    assert flat.cluster_coverage == 1 / 8 < report.cluster_coverage


def test_cluster_sampling_bad_input(tiny_tokenizer, tiny_llama, source):
    with pytest.raises(ValueError, match="model= .*embedder="):
        load_calibration(tiny_tokenizer, n_samples=4, seq_len=16, sampling="cluster")
    with pytest.raises(ValueError, match="n_clusters"):
        load_calibration(tiny_tokenizer, n_samples=4, seq_len=16, sampling="cluster", n_clusters=5,
                         model=tiny_llama)
    with pytest.raises(ValueError, match="random, cluster"):
        load_calibration(tiny_tokenizer, n_samples=4, seq_len=16, sampling="kmeans")
    with pytest.raises(ValueError, match="NaN"):
        load_calibration(tiny_tokenizer, n_samples=4, seq_len=16, sampling="cluster",
                         embedder=lambda w: np.full((len(w), 3), np.nan), source=source)
