"""analyze_positions: stable rank and distance preservation on matrices with known answers, and
the command line on untrained encoders."""
import json
import math

import pytest
import torch

from floater_fairseq.cli.analyze_positions import analyse, correlation_profile, distance_preservation, main, stable_rank


def test_identity_has_full_stable_rank_and_no_correlation_between_positions():
    n = 50
    result = analyse({"identity": torch.eye(n)})["identity"]
    assert result["stable_rank"] == pytest.approx(n)
    assert result["profile"][0] == pytest.approx(1.0) and max(result["profile"][1:]) == 0
    assert result["distance_preservation"] == pytest.approx(1 / n)


def test_circulant_gaussian_basis_matches_closed_forms():
    """P[x, j] = exp(-d(x, j)^2 / (2 s^2)), d the circular distance. By Poisson summation its
    singular values are s sqrt(2 pi) sum_l exp(-2 pi^2 s^2 (k/n + l)^2), and rows delta apart
    have normalised inner product exp(-d(delta)^2 / (4 s^2))."""
    n, s = 240, 5.0
    index = torch.arange(n, dtype=torch.float64)
    distance = (index.unsqueeze(1) - index.unsqueeze(0)).abs()
    distance = torch.minimum(distance, n - distance)
    basis = torch.exp(-distance ** 2 / (2 * s ** 2))

    k = index.unsqueeze(1) / n + torch.arange(-3, 4, dtype=torch.float64)
    singular = s * math.sqrt(2 * math.pi) * torch.exp(-2 * math.pi ** 2 * s ** 2 * k ** 2).sum(1)
    expected_rank = float((singular ** 2).sum() / singular.max() ** 2)
    assert stable_rank(basis) == pytest.approx(expected_rank, rel=1e-9)

    offsets = torch.minimum(index, n - index)
    expected_profile = torch.exp(-offsets ** 2 / (4 * s ** 2))
    profile = correlation_profile(basis)
    torch.testing.assert_close(profile, expected_profile, atol=1e-12, rtol=1e-9)
    # cr > 0.1 for |delta| < 2 s sqrt(ln 10); both ends of the circle count
    reach = 2 * s * math.sqrt(math.log(10))
    assert distance_preservation(profile) == pytest.approx((2 * math.floor(reach) + 1) / n)
    # the trade-off: SR ~ n / (2 sqrt(pi) s), DP ~ 2 s sqrt(ln 10) / n per end of the circle, so
    # SR x DP ~ sqrt(ln 10 / pi) = 0.856 per end, whatever the width
    for width in (3.0, 5.0, 8.0):
        wide = torch.exp(-distance ** 2 / (2 * width ** 2))
        product = stable_rank(wide) * distance_preservation(correlation_profile(wide))
        assert product / 2 == pytest.approx(math.sqrt(math.log(10) / math.pi), rel=0.05)


def test_cli_on_untrained_encoders_prints_the_table_and_saves_plots(tmp_path, capsys):
    out = tmp_path / "analysis"
    flags = ["--arch", "floater_transformer_tiny", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32"]
    assert main(["shifted-basis", "--basis", "gaussian", "--pos-blocks", "input", "--positions", "64",
                 "--out-dir", str(out), *flags]) == 0
    printed = capsys.readouterr().out
    assert "encoder input" in printed and "decoder input" in printed
    assert (out / "heatmap.png").stat().st_size > 1000 and (out / "profile.png").stat().st_size > 1000
    saved = json.loads((out / "analysis.json").read_text())
    assert saved["positions"] == 64 and len(saved["matrices"]["encoder input"]["profile"]) == 64


@pytest.mark.parametrize("encoder,flags,message", [
    ("learned", ["--max-source-positions", "32", "--positions", "40"], "encodes at most 32"),
    ("rope", [], "no absolute positions x dims matrix"),
    ("no-such-encoder", [], "neither a checkpoint file nor a position encoder"),
])
def test_cli_refuses_clearly(encoder, flags, message, tmp_path, capsys):
    assert main([encoder, "--arch", "floater_transformer_tiny", "--out-dir", str(tmp_path / "x"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_inductive_encoders_analyse_positions_beyond_any_maximum(capsys, tmp_path):
    assert main(["sinusoidal", "--arch", "floater_transformer_tiny", "--pos-blocks", "all",
                 "--positions", "1500", "--out-dir", str(tmp_path), "--select", "encoder block 1"]) == 0
    assert "1500 positions" in capsys.readouterr().out
