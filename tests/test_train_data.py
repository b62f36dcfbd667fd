"""flowfast.train.batches through the Trainer: tensor datasets in shuffled epochs, DataLoaders and
other iterables (with (x, label) batches), noise for source=None, bit-identical resume mid-epoch,
evaluation on data, clear errors for bad data arguments, load_array."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from flowfast import data, paths
from flowfast.models import MLP
from flowfast.train import Trainer, load_array


class _Interrupt(Exception):
    pass


class _Recording:
    """I-CFM that records the (x0, x1) batches its loss sees and can fail at a given call (an
    interruption in the middle of a run)."""

    def __init__(self, fail_at=None):
        self.path, self.seen, self.fail_at = paths.IndependentCFM(0.1), [], fail_at

    def couple(self, x0, x1, generator=None):
        return x0, x1

    def loss(self, model, x0, x1, generator=None):
        if self.fail_at is not None and len(self.seen) + 1 == self.fail_at:
            raise _Interrupt
        self.seen.append((x0.clone(), x1.clone()))
        return self.path.loss(model, x0, x1, generator=generator)


def _trainer(target, source=data.gaussian, objective=None, batch_size=16, out_dir=None, **kwargs) -> Trainer:
    torch.manual_seed(0)
    return Trainer(MLP(2, hidden=16, depth=2), objective or _Recording(), source, target, batch_size=batch_size,
                   seed=0, out_dir=out_dir, progress=False, log_every=2, **kwargs)


def _ids(n: int) -> torch.Tensor:
    """n distinct 2-D points whose first coordinate is the row number."""
    noise = torch.randn(n, generator=torch.Generator().manual_seed(1))
    return torch.stack([torch.arange(n, dtype=torch.float32), noise], 1)


# --- tensor datasets -----------------------------------------------------------------------------


def test_tensor_dataset_epochs_use_every_row_once():
    dataset = _ids(96)
    trainer = _trainer(dataset, batch_size=32)
    trainer.train(9)  # three epochs of three batches
    seen = [x1[:, 0].long() for _, x1 in trainer.path.seen]
    epochs = [torch.cat(seen[k:k + 3]) for k in (0, 3, 6)]
    for rows in epochs:
        assert torch.equal(rows.sort().values, torch.arange(96))
    assert not torch.equal(epochs[0], epochs[1])  # each epoch reshuffles
    for x0, x1 in trainer.path.seen:
        assert x0.shape == x1.shape == (32, 2)
    assert trainer.state_dict()["data_state"]["ranks"] == [{"kind": "tensor", "rows": 96, "epoch": 2, "index": 96}]


def test_tensor_dataset_drops_the_incomplete_batch_and_accepts_numpy():
    trainer = _trainer(_ids(40).numpy(), batch_size=16)
    trainer.train(4)  # 2 batches per epoch; 8 rows of each epoch unused
    seen = [x1[:, 0].long() for _, x1 in trainer.path.seen]
    for k in (0, 2):
        rows = torch.cat(seen[k:k + 2])
        assert rows.unique().numel() == 32


def _resume_is_bit_identical(tmp_path, make_target, source=data.gaussian, total=16):
    """An uninterrupted run vs one interrupted during step 10 (last checkpoint at step 8, mid-epoch)
    and resumed in a fresh trainer with fresh data objects: the same losses and batches."""
    full = _trainer(make_target(), source=source, out_dir=tmp_path / "full", checkpoint_every=4)
    losses = full.train(total)
    cut = _trainer(make_target(), source=source, out_dir=tmp_path / "cut", checkpoint_every=4,
                   objective=_Recording(fail_at=10))
    with pytest.raises(_Interrupt):
        cut.train(total)
    resumed = _trainer(make_target(), source=source, out_dir=tmp_path / "cut", checkpoint_every=4)
    rest = resumed.train(total, resume=True)
    assert rest == losses[8:]  # bit-identical floats
    for (a0, a1), (b0, b1) in zip(full.path.seen[8:], resumed.path.seen):
        assert torch.equal(a0, b0) and torch.equal(a1, b1)
    return full


def test_resume_mid_epoch_tensor_dataset(tmp_path):
    full = _resume_is_bit_identical(tmp_path, lambda: _ids(100))  # 6 batches of 16 per epoch
    assert full.state_dict()["data_state"]["ranks"][0]["epoch"] == 2


def test_resume_mid_epoch_dataloader_with_seeded_shuffle(tmp_path):
    def loader():  # what a restarted script builds: the same seed, a fresh generator
        ds = TensorDataset(_ids(100), torch.arange(100))  # (x, label) batches
        return DataLoader(ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(5))

    full = _resume_is_bit_identical(tmp_path, loader)  # 7 batches per epoch, the last of 4 rows
    sizes = [x1.shape[0] for _, x1 in full.path.seen]
    assert sizes[:7] == [16] * 6 + [4] and sizes[7:14] == [16] * 6 + [4]
    assert all(x0.shape == x1.shape for x0, x1 in full.path.seen)  # the source draw follows the loader
    epoch0 = torch.cat([x1[:, 0] for _, x1 in full.path.seen[:7]]).long()
    epoch1 = torch.cat([x1[:, 0] for _, x1 in full.path.seen[7:14]]).long()
    assert torch.equal(epoch0.sort().values, torch.arange(100)) and not torch.equal(epoch0, epoch1)


def test_resume_with_noise_source_and_a_list_of_batches(tmp_path):
    batches = [(_ids(100)[k:k + 12], None) for k in range(0, 96, 12)]  # a plain re-iterable of (x, y) tuples
    _resume_is_bit_identical(tmp_path, lambda: batches, source=None)


def test_evaluation_and_sampling_leave_the_loader_position_alone():
    def loader():
        return DataLoader(_ids(64), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(2))

    plain = _trainer(loader(), source=None).train(6)
    other = _trainer(loader(), source=None)
    first = other.train(3)
    result = other.evaluate(n=40, steps=2)
    assert result["n"] == 40 and result["nfe"] == 2
    assert other.sample(5, steps=2).x.shape == (5, 2)  # the noise's shape from a peek at the loader
    assert first + other.train(6) == plain


# --- source=None, evaluation on data ---------------------------------------------------------------


def test_source_none_draws_standard_normal_noise_like_the_data():
    dataset = torch.randn(64, 3, generator=torch.Generator().manual_seed(0)) * 0.1 + 5
    torch.manual_seed(0)
    trainer = Trainer(MLP(3, hidden=16, depth=2), _Recording(), None, dataset, batch_size=32, progress=False)
    assert trainer.source is None and trainer.target is dataset
    losses = trainer.train(4)
    assert all(np.isfinite(losses))
    x0 = torch.cat([x0 for x0, _ in trainer.path.seen])
    assert x0.shape == (128, 3)
    assert abs(float(x0.mean())) < 0.3 and 0.7 < float(x0.std()) < 1.3  # noise, not the data (mean 5)
    assert trainer.sample(7, steps=2).x.shape == (7, 3)


def test_evaluate_on_a_tensor_dataset():
    dataset = _ids(50)
    trainer = _trainer(dataset)
    assert trainer.evaluate(n=30, steps=2)["n"] == 30
    full = trainer.evaluate(n=500, steps=2)
    assert full["n"] == 50  # capped at the dataset's size
    assert trainer.evaluate(n=500, steps=2) == full  # a fixed evaluation stream


# --- bad arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize("target, error, match", [
    ("moons", TypeError, "target must be"),
    (None, TypeError, "target must be"),
    (42, TypeError, "target must be"),
    (torch.empty(0, 2), ValueError, "empty"),
    (torch.randn(10, 2), ValueError, "fewer than one batch"),
    (torch.arange(64, dtype=torch.int16).reshape(32, 2), ValueError, "floating"),
    (torch.randn(64), ValueError, "2 dims"),
    (np.array([["a", "b"]] * 32), ValueError, "numbers"),
    ((x for x in [torch.randn(16, 2)]), TypeError, "one-shot"),
])
def test_bad_targets_raise_clear_errors(target, error, match):
    with pytest.raises(error, match=match):
        _trainer(target)


@pytest.mark.parametrize("target, error, match", [
    ([], ValueError, "yielded no batches"),
    ([{"x": torch.randn(16, 2)}], TypeError, "yielded a dict"),
    ([torch.arange(32, dtype=torch.int16).reshape(16, 2)], ValueError, "floating"),
])
def test_bad_batches_raise_clear_errors(target, error, match):
    with pytest.raises(error, match=match):
        _trainer(target).train(1)


def test_bad_sources_raise_clear_errors():
    for source in ("gaussian", torch.randn(16, 2), [torch.randn(16, 2)]):
        with pytest.raises(TypeError, match="source must be"):
            _trainer(data.eight_gaussians, source=source)


def test_changed_data_on_resume_restarts_it_with_a_warning(tmp_path, capsys):
    _trainer(_ids(64), out_dir=tmp_path, checkpoint_every=2).train(2)
    again = _trainer(_ids(80), out_dir=tmp_path)
    assert again.train(3, resume=True) and again.step == 3
    assert "data starts from its beginning" in capsys.readouterr().err


# --- load_array ----------------------------------------------------------------------------------


def test_load_array_reads_npy_and_pt(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 3))
    np.save(tmp_path / "a.npy", x)
    got = load_array(tmp_path / "a.npy")
    assert got.dtype == torch.float64 and torch.equal(got, torch.from_numpy(x))
    np.save(tmp_path / "ints.npy", np.arange(12).reshape(6, 2))
    assert load_array(str(tmp_path / "ints.npy")).dtype == torch.float32
    torch.save(torch.ones(5, 2, dtype=torch.float16), tmp_path / "b.pt")
    assert load_array(tmp_path / "b.pt").dtype == torch.float16
    trainer = _trainer(load_array(tmp_path / "a.npy")[:, :2], batch_size=8)
    assert len(trainer.train(3)) == 3


def test_load_array_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data file"):
        load_array(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="directory"):
        load_array(tmp_path)
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"\.npy .* or \.pt"):
        load_array(tmp_path / "x.csv")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="not a readable .npy"):
        load_array(tmp_path / "junk.npy")
    (tmp_path / "junk.pt").write_bytes(b"not torch")
    with pytest.raises(ValueError, match="not a readable .pt"):
        load_array(tmp_path / "junk.pt")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a readable"):
        load_array(tmp_path / "objects.npy")
    np.save(tmp_path / "strings.npy", np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="numbers"):
        load_array(tmp_path / "strings.npy")
    np.save(tmp_path / "complex.npy", np.ones((3, 2), dtype=np.complex64))
    with pytest.raises(ValueError, match="numbers"):
        load_array(tmp_path / "complex.npy")
    torch.save({"x": torch.ones(3)}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match="holds a dict"):
        load_array(tmp_path / "dict.pt")
    torch.save(torch.ones(2, 2, dtype=torch.complex64), tmp_path / "complex.pt")
    with pytest.raises(ValueError, match="complex"):
        load_array(tmp_path / "complex.pt")
    np.save(tmp_path / "empty.npy", np.zeros((0, 2)))
    with pytest.raises(ValueError, match="no rows"):
        load_array(tmp_path / "empty.npy")
    np.save(tmp_path / "scalar.npy", np.float64(3.0))
    with pytest.raises(ValueError, match="no rows"):
        load_array(tmp_path / "scalar.npy")


def test_token_data_reach_the_objective_as_integers_and_a_cfm_path_refuses_them():
    """int64 data are token ids (flowfast.categorical): kept as integers, not cast to the model's
    dtype; a continuous path names the dtype it needs at the first step."""
    tokens = torch.arange(64).reshape(32, 2)
    trainer = Trainer(MLP(2, hidden=16, depth=2), "icfm", target=tokens, batch_size=16, progress=False)
    x0, x1 = trainer._pair(16, torch.Generator().manual_seed(0))
    assert x1.dtype == torch.int64 and x0.dtype == torch.float32
    with pytest.raises(TypeError, match="x1 must be float.* got int64"):
        trainer.train(1)
