"""Tables of real numbers from the command line: csv:PATH and 2-D npz:PATH, end to end, and every bad
table refused with its row and column before anything is written."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import torch

from balanced_vae.cli import main
from balanced_vae.config import TrainConfig
from balanced_vae.data import DataError, load_dataset
from balanced_vae.data.table import Standardiser, load_table
from balanced_vae.likelihoods import FixedVariance
from balanced_vae.model import VAE
from balanced_vae.nets import NetSpec


def _write_csv(path, rows, header=("a", "b", "c")):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


BAD = {
    "non_numeric": ([[1, 2, 3], [4, "x", 6], [7, 8, 9]], ["row 2 (line 3 of the file)", "column 'b'", "'x'"]),
    "empty_cell": ([[1, 2, 3], [4, "", 6], [7, 8, 9]], ["row 2 (line 3 of the file)", "column 'b'", "empty cell"]),
    "nan": ([[1, 2, 3], [4, 5, 6], [7, 8, "nan"]], ["row 3 (line 4 of the file)", "column 'c'", "nan"]),
    "inf": ([[1, 2, 3], ["-inf", 5, 6], [7, 8, 9]], ["row 2 (line 3 of the file)", "column 'a'", "-inf"]),
    "constant": ([[1, 5, 3], [4, 5, 6], [7, 5, 9]], ["constant column", "'b'", "drop the column"]),
    "single_row": ([[1, 2, 3]], ["1 row(s)", "at least 2 rows"]),
    "ragged": ([[1, 2, 3], [4, 5]], ["row 2 (line 3 of the file)", "2 cells", "3 columns"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_table_is_refused_naming_row_and_column_and_nothing_is_written(tmp_path, capsys, case):
    rows, words = BAD[case]
    path = _write_csv(tmp_path / "t.csv", rows)
    out = tmp_path / "run"
    assert main(["train", "--dataset", f"csv:{path}", "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "fix:" in err
    for w in words:
        assert w in err, (w, err)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_target_column_is_left_out_and_must_exist(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = _write_csv(tmp_path / "t.csv", [[*rng.normal(size=2), "cat"] for _ in range(20)], ("u", "v", "label"))
    with pytest.raises(DataError, match="'cat', not a number"):
        load_dataset(f"csv:{path}")
    data, _, columns = load_table(f"csv:{path}?target=label")
    assert columns == ["u", "v"] and data.shape == (2, 1, 1) and data.real_valued
    assert main(["train", "--dataset", f"csv:{path}", "--target", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "'nope' is not a column" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_standardised_by_training_rows_with_its_jacobian(tmp_path):
    rng = np.random.default_rng(1)
    x_train, x_test = rng.normal(5, 3, size=(40, 3)), rng.normal(5, 3, size=(7, 3))
    np.savez(tmp_path / "t.npz", x_train=x_train, x_test=x_test)
    data, scaler, _ = load_table(f"npz:{tmp_path / 't.npz'}")
    assert data.real_valued and data.x_train.shape == (40, 3, 1, 1) and data.x_test.shape == (7, 3, 1, 1)
    np.testing.assert_allclose(scaler.mean, x_train.mean(0))
    np.testing.assert_allclose(
        data.x_test.flatten(1).numpy(), (x_test - x_train.mean(0)) / x_train.std(0), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(scaler.invert(scaler.apply(x_test)), x_test)
    # change of variables: a density of x' = (x - m) / s is a density of x divided by prod_d s_d
    s = Standardiser(np.zeros(3), np.array([2.0, 0.5, 10.0]))
    assert s.log_det() == pytest.approx(math.log(2.0 * 0.5 * 10.0))
    assert load_dataset(f"npz:{tmp_path / 't.npz'}").real_valued


def test_bad_npz_table_names_the_array_row_and_column(tmp_path):
    x = np.arange(12.0).reshape(4, 3)
    x[2, 1] = np.inf
    np.savez(tmp_path / "t.npz", x_train=x, x_test=np.ones((2, 3)))
    with pytest.raises(DataError, match=r"\[x_train\]: row 2, column 'x1' \(column 2\) is inf"):
        load_dataset(f"npz:{tmp_path / 't.npz'}")
    np.savez(tmp_path / "t.npz", x_train=np.arange(12.0).reshape(4, 3), x_test=np.ones((2, 4)))
    with pytest.raises(DataError, match="3 training columns but 4 test columns"):
        load_dataset(f"npz:{tmp_path / 't.npz'}")


def test_sigmoid_output_on_a_table_is_refused_and_identity_is_unbounded():
    with pytest.raises(ValueError, match="--output identity"):
        TrainConfig(output="sigmoid").resolved((3, 1, 1), 10, real_valued=True)
    assert TrainConfig().resolved((3, 1, 1), 10, real_valued=True).output == "identity"
    assert TrainConfig().resolved((1, 8, 8), 10).output is None  # images: sigmoid, as saved runs have it
    with pytest.raises(ValueError, match="output"):
        TrainConfig(output="tanh")
    torch.manual_seed(0)
    spec = NetSpec((3, 1, 1), 2, 8)
    ident, sig = VAE(spec, FixedVariance(1.0), output="identity"), VAE(spec, FixedVariance(1.0))
    sig.load_state_dict(ident.state_dict())
    z = 100 * torch.randn(16, 2)
    raw = ident.decode_mean(z)
    assert raw.abs().max() > 1 and torch.allclose(sig.decode_mean(z), torch.sigmoid(raw))


def test_csv_end_to_end_train_sample_evaluate_report(tmp_path):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(150, 1))
    x = np.hstack([z * 10 + 50, z * -2 + 1 + 0.1 * rng.normal(size=(150, 1)), rng.normal(1000, 100, (150, 1))])
    path = _write_csv(tmp_path / "t.csv", [[*r, i % 2] for i, r in enumerate(x)], ("p", "q", "r", "label"))
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                f"csv:{path}",
                "--target",
                "label",
                "--epochs",
                "3",
                "--device",
                "cpu",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    config = json.loads((run / "config.json").read_text())
    assert config["output"] == "identity" and config["dataset"] == f"csv:{path}?target=label"
    assert (
        main(["sample", str(run), "--sampler", "gmm", "--components", "4", "--n", "500", "--out", str(tmp_path / "s")])
        == 0
    )
    with open(tmp_path / "s" / "gmm_rows.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["p", "q", "r"] and len(rows) == 501
    draws = np.array(rows[1:], dtype=float)
    assert abs(draws[:, 2].mean() - 1000) < 100  # the original units, not standardised
    # sampling again into the same folder replaces its own CSVs; a user's CSV there is never replaced
    assert (
        main(["sample", str(run), "--sampler", "gmm", "--components", "4", "--n", "10", "--out", str(tmp_path / "s")])
        == 0
    )
    user = tmp_path / "user"
    user.mkdir()
    (user / "gmm_means.csv").write_text("precious\n")
    assert main(["sample", str(run), "--sampler", "gmm", "--n", "10", "--out", str(user)]) == 2
    assert (user / "gmm_means.csv").read_text() == "precious\n" and sorted(os.listdir(user)) == ["gmm_means.csv"]
    assert main(["evaluate", str(run), "--metrics", "elbo,iwae"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert math.isfinite(res["metrics"]["iwae"]["values"]["prior"]["log_likelihood"]["mean"])
    assert math.isfinite(res["metrics"]["elbo"]["values"]["elbo"]["mean"])
    proto = res["metrics"]["iwae"]["protocol"]
    assert proto["units"] == "nats per row of the standardised table"
    scaler = load_table(f"csv:{path}?target=label")[1]  # the training rows' spread: about 10, 2 and 100
    assert proto["log_det_scaling"] == pytest.approx(scaler.log_det()) == pytest.approx(math.log(2000), abs=0.5)
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").stat().st_size > 10_000
