"""Weight averaging (regressors.average) and the constant schedule / snapshots of regressors.train: known answers."""
import numpy as np
import pytest
import torch

from morphable.errors import WeightsError
from regressors.average import (average_state_dicts, average_weight_files, recompute_batchnorm, snapshots_of_run)
from regressors.train import lr_at
from regressors.weights import load_regressor, read_weight_file, save_regressor
from tests.test_regressors import synthetic_label_file, synthetic_model, tiny


def test_mean_of_state_dicts_is_the_midpoint():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(7)}
    out = average_state_dicts([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0])) and out["w"].dtype == torch.float32
    assert int(out["n"]) == 3  # integer buffers: the first dict's
    assert torch.equal(average_state_dicts([a])["w"], a["w"])


def test_mean_of_state_dicts_refuses_other_networks():
    a = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="at least one"):
        average_state_dicts([])
    with pytest.raises(ValueError, match="other entries"):
        average_state_dicts([a, {"v": torch.zeros(2)}])
    with pytest.raises(ValueError, match=r"w is \(3,\)"):
        average_state_dicts([a, {"w": torch.zeros(3)}])


def _two_files(tmp_path):
    m = synthetic_model()
    torch.manual_seed(0)
    r1, r2 = tiny(m), tiny(m)
    with torch.no_grad():
        for p in r2.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_regressor(r1, tmp_path / "a.pt")
    save_regressor(r2, tmp_path / "b.pt")
    return m, r1, r2


def test_weight_files_average_parameter_by_parameter(tmp_path):
    m, r1, r2 = _two_files(tmp_path)
    avg = average_weight_files([tmp_path / "a.pt", tmp_path / "b.pt"])
    sd1, sd2 = r1.state_dict(), r2.state_dict()
    for k, v in avg["state_dict"].items():
        if v.is_floating_point():
            assert torch.allclose(v, (sd1[k] + sd2[k]) / 2, atol=1e-7), k
    assert avg["metrics"]["averaged_from"] == ["a.pt", "b.pt"]
    # the result is a weight file that loads; a file averaged with itself is itself
    torch.save(avg, tmp_path / "avg.pt")
    load_regressor(tmp_path / "avg.pt", model=m)
    same = average_weight_files([tmp_path / "a.pt", tmp_path / "a.pt"])["state_dict"]
    assert all(torch.equal(same[k], v) for k, v in read_weight_file(tmp_path / "a.pt")["state_dict"].items())


def test_weight_files_of_other_networks_are_refused(tmp_path):
    m, _, _ = _two_files(tmp_path)
    save_regressor(tiny(m, arch="resnet"), tmp_path / "c.pt")
    with pytest.raises(WeightsError, match="c.pt: its config differs"):
        average_weight_files([tmp_path / "a.pt", tmp_path / "c.pt"])
    with pytest.raises(WeightsError, match="not found"):
        average_weight_files([tmp_path / "a.pt", tmp_path / "missing.pt"])
    with pytest.raises(WeightsError, match="at least one"):
        average_weight_files([])


def test_batchnorm_statistics_are_the_mean_over_the_batches():
    bn = torch.nn.BatchNorm1d(2, momentum=0.5)
    bn.running_mean.fill_(100.0)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(16, 2, generator=g) * torch.tensor([1.0, 3.0]) + torch.tensor([5.0, -2.0]) for _ in range(3)]
    net = torch.nn.Sequential(bn).eval()
    assert recompute_batchnorm(net, iter(batches)) == 3
    assert not net.training  # the mode it was in
    want_mean = torch.stack([b.mean(0) for b in batches]).mean(0)
    want_var = torch.stack([b.var(0, unbiased=True) for b in batches]).mean(0)
    assert torch.allclose(bn.running_mean, want_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, want_var, atol=1e-5)
    assert bn.momentum == 0.5  # restored


def test_snapshots_of_a_run_in_step_order(tmp_path):
    for s in (1200, 300, 45, 10000):
        (tmp_path / f"snap_{s:07d}.pt").write_bytes(b"")
    (tmp_path / "best.pt").write_bytes(b"")
    assert [p.name for p in snapshots_of_run(tmp_path)] == ["snap_0000045.pt", "snap_0000300.pt", "snap_0001200.pt",
                                                             "snap_0010000.pt"]
    assert [p.name for p in snapshots_of_run(tmp_path, 1200)] == ["snap_0001200.pt", "snap_0010000.pt"]
    with pytest.raises(FileNotFoundError, match="STEP >= 20000"):
        snapshots_of_run(tmp_path, 20000)


def test_constant_schedule_holds_the_rate_after_the_warm_up():
    assert lr_at(0, 100, 1e-3, 10, "constant") == pytest.approx(1e-4)
    assert lr_at(50, 100, 1e-3, 10, "constant") == lr_at(99, 100, 1e-3, 10, "constant") == 1e-3
    assert lr_at(99, 100, 1e-3, 10) < 2e-5  # cosine decays to 1 %
    with pytest.raises(ValueError, match="cosine"):
        lr_at(50, 100, 1e-3, 10, "linear")


def test_snapshot_run_then_average_with_batchnorm_from_the_labels(tmp_path, capsys, monkeypatch):
    from regressors import average as A
    from regressors import train as T

    m = synthetic_model()
    synthetic_label_file(tmp_path, m, seed=6)
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        T.train(T.build_parser().parse_args(
            ["--labels", str(tmp_path / "labels.npz"), "--out", str(out), "--data-root", str(tmp_path), "--batch", "4",
             "--width", "0.25", "--arch", "resnet", "--depth", "10", "--threads", "1", "--epochs", "3", "--no-progress",
             "--warmup", "1", "--schedule", "constant", "--snapshots"]), model=m)
    finally:
        torch.set_num_threads(threads)
    snaps = snapshots_of_run(out)
    assert [p.name for p in snaps] == ["snap_0000002.pt", "snap_0000004.pt", "snap_0000006.pt"]  # one per epoch
    monkeypatch.setattr("regressors.data.model_for_labels", lambda name, labels: m)  # the synthetic model, unknown by name
    try:
        A.main(["--run", str(out), "--from-step", "4", "--out", str(tmp_path / "swa.pt"), "--labels",
                str(tmp_path / "labels.npz"), "--data-root", str(tmp_path), "--bn-batches", "2", "--batch", "4",
                "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert "mean of 2 files" in capsys.readouterr().out
    d = read_weight_file(tmp_path / "swa.pt")
    assert d["metrics"]["averaged_from"] == ["snap_0000004.pt", "snap_0000006.pt"]
    assert d["metrics"]["batchnorm_batches"] == 2
    plain = average_weight_files(snaps[1:])["state_dict"]
    conv = [k for k in plain if k.endswith("weight") and plain[k].ndim == 4][0]
    bn = [k for k in plain if k.endswith("running_mean")][0]
    assert torch.allclose(d["state_dict"][conv], plain[conv])  # parameters: the mean
    assert not torch.allclose(d["state_dict"][bn], plain[bn])  # BatchNorm: recomputed
    reg = load_regressor(tmp_path / "swa.pt", model=m)
    assert reg.predict(np.zeros((1, 120, 120, 3), np.uint8)).shape.shape == (1, m.n_shape)
