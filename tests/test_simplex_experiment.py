"""The simplex-density experiment (smoke mode) and the simplex plotting helpers."""

import json

import matplotlib
import numpy as np
import pytest

from structsel import plotting

matplotlib.use("Agg")


def test_barycentric_mapping_and_grid():
    # vertices go to the triangle corners, the centre to the centroid.
    np.testing.assert_allclose(plotting.to_cartesian(np.eye(3)), plotting.CORNERS)
    np.testing.assert_allclose(plotting.to_cartesian(np.full(3, 1 / 3)),
                               [0.5, np.sqrt(3) / 6], atol=1e-12)
    g = plotting.simplex_grid(10)
    assert g.shape == (66, 3)  # (n+1)(n+2)/2 lattice points
    np.testing.assert_allclose(g.sum(-1), 1.0, atol=1e-12)
    assert g.min() > 0
    with pytest.raises(ValueError, match="resolution"):
        plotting.simplex_grid(1)
    with pytest.raises(ValueError, match="last axis"):
        plotting.to_cartesian(np.ones((4, 2)))


def test_plot_helpers_place_points_and_colours():
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3)
    samples = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    pts = plotting.plot_simplex_samples(axes[0], samples)
    np.testing.assert_allclose(pts.get_offsets(), plotting.CORNERS[[0, 2]])
    # a density that is exp(gamma_0): colour values follow gamma_0 (log scale, no clipping).
    m = plotting.plot_simplex_density(axes[1], lambda g: g[:, 0], resolution=8,
                                      clip_quantiles=(0.0, 1.0))
    np.testing.assert_allclose(np.sort(m.get_array()), np.sort(plotting.simplex_grid(8)[:, 0]))
    hexes = plotting.plot_simplex_hist(axes[2], np.repeat(samples, 5, 0), gridsize=5)
    assert hexes.get_array().sum() == 10
    plt.close(fig)


def test_smoke_run_writes_config_png_and_summary(tmp_path):
    from experiments import simplex_densities

    out = tmp_path / "copy" / "fig.png"
    summary = simplex_densities.main(["--smoke", "--workdir", str(tmp_path / "run"),
                                      "--seed", "3", "--out", str(out)])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["seed"] == 3 and config["config"]["resolution"] == 30
    png = (tmp_path / "run" / "simplex_densities.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and out.read_bytes() == png
    assert len(summary) == 9
    # the figure's claims, checked on its own samples: t = 0.1 puts mass at the vertices,
    # and GS at t = 5 sits closer to the centre than at t = 0.995.
    gs = {k.split("=")[1]: v for k, v in summary.items() if k.startswith("Gumbel")}
    assert gs["0.1"]["mean_max_coordinate"] > 0.9
    assert gs["5"]["mean_dist_to_centre"] < gs["0.995"]["mean_dist_to_centre"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 9
