"""flowfast.categorical.tasks: the discrete benchmark tasks and their exact metrics (Markov chain
likelihoods and entropy rate, uniform balanced brackets, binarized digits scorer), and their
input checks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from flowfast.categorical.tasks import (TASKS, BinaryDigitScorer, BinaryDigitsTask, BracketsTask, MarkovChainTask,
                                        binarized_digit_labels, binarized_digits, digit_split, dyck_paths,
                                        get_task)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- Markov chain -------------------------------------------------------------------------------


def _brute_log_prob(task: MarkovChainTask, seq) -> float:
    logp = math.log(float(task.init[seq[0]]))
    for a, b in zip(seq[:-1], seq[1:]):
        logp += math.log(float(task.transition[a, b]))
    return logp


def test_markov_nll_and_entropy_rate_match_brute_force_enumeration():
    task = MarkovChainTask(vocab=3, length=4, seed=5)
    every = torch.tensor(list(itertools.product(range(3), repeat=4)))
    nll = task.nll(every)
    assert nll.dtype == torch.float64 and nll.shape == (81,)
    brute = torch.tensor([-_brute_log_prob(task, s) for s in every.tolist()], dtype=torch.float64)
    torch.testing.assert_close(nll, brute, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(task.nll_per_token(every), brute / 4)
    p = (-nll).exp()
    assert abs(float(p.sum()) - 1) < 1e-12  # a distribution over all 3^4 sequences
    assert abs(task.entropy_rate() - float((p * nll).sum()) / 4) < 1e-12  # exact entropy / L
    # the average marginal, by enumeration: token frequencies weighted by sequence probability
    freq = torch.stack([(p[:, None] * (every == v).double()).sum(0).mean() for v in range(3)])
    torch.testing.assert_close(task.marginals().mean(0), freq)
    assert abs(task.true_unigram_entropy() - float(-(freq * freq.log()).sum())) < 1e-12


def test_markov_chain_is_a_seeded_positive_distribution_and_leaves_the_global_rng_alone():
    before = torch.random.get_rng_state()
    task = MarkovChainTask()
    assert torch.equal(before, torch.random.get_rng_state())
    assert (task.vocab, task.length) == (16, 32)
    assert task.init.shape == (16,) and task.transition.shape == (16, 16)
    assert float(task.init.min()) > 0 and float(task.transition.min()) >= 1e-3 / 16 * 0.999
    torch.testing.assert_close(task.transition.sum(1), torch.ones(16, dtype=torch.float64))
    assert torch.equal(MarkovChainTask().transition, task.transition)
    assert not torch.equal(MarkovChainTask(seed=1).transition, task.transition)
    # low concentration: peaked rows, an entropy rate well below log V
    assert task.entropy_rate() < 0.8 * math.log(16)
    a, b = task.sample(50, _gen(3)), task.sample(50, _gen(3))
    assert a.dtype == torch.int64 and a.shape == (50, 32) and torch.equal(a, b)


def test_markov_entropy_rate_matches_monte_carlo_nll_of_true_samples():
    task = MarkovChainTask()
    x = task.sample(20000, _gen(0))
    per_token = task.nll_per_token(x)
    tol = 4 * float(per_token.std()) / math.sqrt(len(x))  # 4 standard errors
    assert abs(float(per_token.mean()) - task.entropy_rate()) < tol
    report = task.evaluate(x)
    assert all(isinstance(v, (int, float)) for v in report.values())
    assert abs(report["nll_ratio"] - 1) < tol / task.entropy_rate()
    assert report["true_nll_per_token"] == task.entropy_rate()
    assert abs(report["unigram_entropy"] - report["true_unigram_entropy"]) < 0.01
    assert report["unique_fraction"] > 0.99
    # the empirical marginal at each position matches the propagated one (5 binomial std)
    emp = torch.stack([torch.bincount(x[:, t], minlength=16) for t in range(32)]).double() / len(x)
    m = task.marginals()
    assert bool(((emp - m).abs() <= 5 * (m * (1 - m) / len(x)).sqrt() + 1e-3).all())


def test_markov_uniform_random_tokens_score_far_worse_than_true_samples():
    task = MarkovChainTask()
    noise = torch.randint(0, 16, (2000, 32), generator=_gen(1))
    report = task.evaluate(noise)
    assert report["nll_ratio"] > 2
    assert report["unigram_entropy"] > report["true_unigram_entropy"]
    # collapse onto one repeated sequence: all diversity numbers drop
    copies = task.sample(1, _gen(2)).expand(100, 32)
    collapsed = task.evaluate(copies, train=copies[:1])
    assert collapsed["unique_fraction"] == 0.01 and collapsed["novel_fraction"] == 0.0
    assert collapsed["unigram_entropy"] < report["true_unigram_entropy"]
    assert task.evaluate(task.sample(100, _gen(3)), train=copies[:1])["novel_fraction"] == 1.0


# --- balanced brackets ------------------------------------------------------------------------


def _reference_valid(seq) -> bool:
    stack = []
    for tok in seq:
        if tok % 2 == 0:
            stack.append(tok // 2)
        elif not stack or stack.pop() != tok // 2:
            return False
    return not stack


def test_dyck_path_counts_are_catalan_numbers():
    assert [dyck_paths(2 * k) for k in range(9)] == [math.comb(2 * k, k) // (k + 1) for k in range(9)]
    assert dyck_paths(3) == 0 and dyck_paths(3, depth=1) == 2  # (), ()() from depth 1: 3 steps
    assert dyck_paths(6, ceiling=1) == 1 and dyck_paths(6, ceiling=2) == 4


def test_is_valid_agrees_with_a_stack_on_every_short_word():
    task = BracketsTask(length=6, kinds=2)
    every = torch.tensor(list(itertools.product(range(4), repeat=6)))
    valid = task.is_valid(every)
    assert valid.dtype == torch.bool and valid.shape == (4096,)
    assert valid.tolist() == [_reference_valid(s) for s in every.tolist()]
    assert int(valid.sum()) == 5 * 2 ** 3  # Catalan(3) shapes times 2 kinds per pair


def test_is_valid_rejects_crafted_invalid_words():
    task = BracketsTask(length=6, kinds=3)  # ( = 0, ) = 1, [ = 2, ] = 3, { = 4, } = 5
    words = {
        "([]){}": ([0, 2, 3, 1, 4, 5], True),
        "([{}])": ([0, 2, 4, 5, 3, 1], True),
        "(]()[)": ([0, 3, 0, 1, 2, 1], False),  # mismatched kinds
        "([)]{}": ([0, 2, 1, 3, 4, 5], False),  # crossed pairs
        ")(()()": ([1, 0, 0, 1, 0, 1], False),  # closes before opening
        "())(()": ([0, 1, 1, 0, 0, 1], False),  # depth below 0 in the middle, back to 0 at the end
        "((((((": ([0, 0, 0, 0, 0, 0], False),  # never closed
        "(()()(": ([0, 0, 1, 0, 1, 0], False),  # unclosed at the end
    }
    tokens = torch.tensor([w for w, _ in words.values()])
    assert task.is_valid(tokens).tolist() == [ok for _, ok in words.values()]
    report = task.evaluate(tokens)
    assert report["valid_fraction"] == 0.25 and report["unique_valid_fraction"] == 0.25
    assert report["mean_max_depth"] == 2.5  # ([]){} nests 2 deep, ([{}]) 3


def test_bracket_sampler_gives_diverse_valid_words():
    task = BracketsTask()
    assert (task.vocab, task.length, task.kinds) == (6, 32, 3)
    x = task.sample(2000, _gen(0))
    assert x.dtype == torch.int64 and x.shape == (2000, 32)
    assert bool(task.is_valid(x).all())
    report = task.evaluate(x)
    assert all(isinstance(v, (int, float)) for v in report.values())
    assert report["valid_fraction"] == 1.0 and report["unique_valid_fraction"] > 0.99
    assert abs(report["unigram_entropy"] - math.log(6)) < 1e-3  # every valid word: 1/6 per token
    assert abs(report["mean_max_depth"] - report["true_mean_max_depth"]) < 0.15
    assert torch.equal(task.sample(20, _gen(4)), task.sample(20, _gen(4)))
    noise = task.evaluate(torch.randint(0, 6, (500, 32), generator=_gen(1)))
    assert noise["valid_fraction"] == 0.0 and math.isnan(noise["mean_max_depth"])
    novel = task.evaluate(x[:100], train=x[:50])
    assert novel["novel_fraction"] == 0.5
    x[0, 0] = 1  # now invalid: not novel either
    assert task.evaluate(x[:100], train=x[50:100])["novel_fraction"] == 0.49


def test_bracket_sampler_is_uniform_over_shapes_and_kinds():
    task = BracketsTask(length=6, kinds=2)
    x = task.sample(20000, _gen(0))
    shapes = (x % 2).tolist()  # 0 = open, 1 = close
    counts = {}
    for s in shapes:
        counts[tuple(s)] = counts.get(tuple(s), 0) + 1
    assert len(counts) == 5  # Catalan(3) shapes
    assert all(abs(c / len(x) - 0.2) < 0.02 for c in counts.values())  # 7 binomial std
    opening_kinds = (x[x % 2 == 0] // 2).double()
    assert abs(float(opening_kinds.mean()) - 0.5) < 0.01


def test_bracket_true_mean_max_depth_matches_enumeration():
    for length in (2, 8, 10):
        task = BracketsTask(length=length, kinds=1)
        paths = [p for p in itertools.product((1, -1), repeat=length)
                 if all(d >= 0 for d in itertools.accumulate(p)) and sum(p) == 0]
        depth = sum(max(itertools.accumulate(p)) for p in paths) / len(paths)
        report = task.evaluate(task.sample(10, _gen(0)))
        assert abs(report["true_mean_max_depth"] - depth) < 1e-12


# --- binarized digits -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def digit_scorer_and_rng_kept():
    pytest.importorskip("sklearn")
    before = torch.random.get_rng_state()
    scorer = BinaryDigitScorer()
    return scorer, torch.equal(before, torch.random.get_rng_state())


@pytest.fixture
def digit_scorer(digit_scorer_and_rng_kept):
    return digit_scorer_and_rng_kept[0]


def test_binarized_digits_shape_values_and_labels():
    pytest.importorskip("sklearn")
    bits, labels = binarized_digits(), binarized_digit_labels()
    assert bits.shape == (1797, 64) and bits.dtype == torch.int64
    assert set(bits.unique().tolist()) == {0, 1}
    assert labels.shape == (1797,) and labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))
    assert 0.2 < float(bits.double().mean()) < 0.4
    assert float(binarized_digits(0.0).double().mean()) > float(bits.double().mean())
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\)"):
        binarized_digits(1.5)


def test_binary_digit_scorer_separates_real_digits_from_noise(digit_scorer_and_rng_kept):
    scorer, rng_kept = digit_scorer_and_rng_kept
    assert rng_kept
    bits, labels = binarized_digits(), binarized_digit_labels()
    heldout = digit_split()[1]
    assert torch.equal(scorer.heldout_index, heldout)
    assert scorer.heldout_accuracy > 0.93
    real = scorer.score(bits[heldout])
    assert all(isinstance(v, (int, float)) for k, v in real.items() if k != "class_histogram")
    assert real["confidence"] > 0.85 and real["confidence"] == scorer.real_confidence
    assert real["class_entropy"] > 2.2 and len(real["class_histogram"]) == 10
    noise = scorer.score(torch.randint(0, 2, (500, 64), generator=_gen(0)))
    assert noise["confidence"] < 0.5 and noise["confident_fraction"] < 0.05
    assert noise["nn_ratio"] > 3
    threes = bits[heldout][labels[heldout] == 3]
    assert scorer.class_rate(threes, 3) > 0.85 and scorer.class_rate(threes, 8) < 0.1
    probs = scorer.classify(threes)
    assert probs.shape == (len(threes), 10) and probs.dtype == torch.float64


def test_binary_digits_task_samples_training_rows_and_scores_novelty(digit_scorer):
    task = get_task("digits")
    assert isinstance(task, BinaryDigitsTask) and (task.vocab, task.length) == (2, 64)
    assert task.train.shape == (1437, 64) and task.heldout.shape == (360, 64)
    x = task.sample(300, _gen(0))
    assert torch.equal(x, task.sample(300, _gen(0)))
    copies = task.evaluate(x)
    assert copies["nn_hamming"] == 0.0 and copies["copy_fraction"] == 1.0
    fresh = task.evaluate(task.heldout)
    assert 0.7 < fresh["nn_ratio"] < 1.3 and fresh["copy_fraction"] < 0.1
    assert abs(fresh["real_nn_hamming"] - task.scorer.real_nn_hamming) == 0


# --- the generic interface and input checks --------------------------------------------------


def test_registry_tasks_share_one_interface(digit_scorer):
    assert set(TASKS) == {"markov", "brackets", "digits"}
    for name in TASKS:
        task = get_task(name)
        x = task.sample(8, _gen(0))
        assert x.dtype == torch.int64 and x.shape == (8, task.length)
        assert int(x.min()) >= 0 and int(x.max()) < task.vocab
        report = task.evaluate(x.numpy())  # numpy arrays are accepted too
        assert isinstance(report, dict) and report["n"] == 8
    with pytest.raises(ValueError, match="unknown task 'nope'; choose one of"):
        get_task("nope")


def _evaluators(scorer):
    return [("markov", MarkovChainTask(vocab=5, length=7).evaluate, 5, 7),
            ("brackets", BracketsTask(length=6, kinds=2).evaluate, 4, 6),
            ("brackets.is_valid", BracketsTask(length=6, kinds=2).is_valid, 4, 6),
            ("markov.nll", MarkovChainTask(vocab=5, length=7).nll, 5, 7),
            ("digits", scorer.score, 2, 64)]


def test_bad_tokens_raise_clear_errors(digit_scorer):
    for name, fn, vocab, length in _evaluators(digit_scorer):
        ok = torch.zeros(3, length, dtype=torch.int64)
        with pytest.raises(TypeError, match=r"integer tensor of token ids in \[0, %d\), got dtype float32" % vocab):
            fn(ok.float())
        with pytest.raises(TypeError, match="got dtype bool"):
            fn(ok.bool())
        with pytest.raises(TypeError, match=r"must be a torch.Tensor, numpy.ndarray, .*; got list"):
            fn(ok.tolist())
        too_big = ok.clone()
        too_big[1, 2] = vocab
        with pytest.raises(ValueError, match=r"token ids in \[0, %d\) \(vocab=%d\), got ids from 0 to %d \(1 out"
                           % (vocab, vocab, vocab)):
            fn(too_big)
        with pytest.raises(ValueError, match="got ids from -1 to 0"):
            fn(ok - (torch.arange(length) == 0).long())
        with pytest.raises(ValueError, match=r"shape \(n, %d\) with n >= 1.*got \(3, %d\)" % (length, length + 1)):
            fn(torch.zeros(3, length + 1, dtype=torch.int64))
        with pytest.raises(ValueError, match=r"got \(%d,\)" % length):
            fn(torch.zeros(length, dtype=torch.int64))
        with pytest.raises(ValueError, match=r"got \(0, %d\)" % length):
            fn(torch.zeros(0, length, dtype=torch.int64))
        fn(np.zeros((2, length), dtype=np.int32))  # other integer dtypes are fine


def test_bad_task_arguments_raise_clear_errors(digit_scorer):
    with pytest.raises(ValueError, match="vocab must be >= 2, got 1"):
        MarkovChainTask(vocab=1)
    with pytest.raises(TypeError, match="length must be an int"):
        MarkovChainTask(length=3.0)
    with pytest.raises(ValueError, match="concentration must be > 0"):
        MarkovChainTask(concentration=0.0)
    with pytest.raises(ValueError, match=r"smoothing must be in \(0, 1\)"):
        MarkovChainTask(smoothing=0.0)
    with pytest.raises(ValueError, match="length must be even"):
        BracketsTask(length=7)
    with pytest.raises(ValueError, match="kinds must be >= 1"):
        BracketsTask(kinds=0)
    with pytest.raises(TypeError, match="seed must be an int"):
        BinaryDigitScorer(seed=True)
    with pytest.raises(ValueError, match=r"label must be an int in 0..9, got 10"):
        digit_scorer.class_rate(torch.zeros(2, 64, dtype=torch.int64), 10)
    for task in (MarkovChainTask(), BracketsTask()):
        with pytest.raises(ValueError, match="n must be a positive int, got 0"):
            task.sample(0)
        with pytest.raises(TypeError, match="generator must be a torch.Generator or None"):
            task.sample(2, generator=0)
        with pytest.raises(TypeError, match="train must be an integer tensor"):
            task.evaluate(task.sample(2), train=torch.zeros(2, task.length))
