"""Smoke runs of the real-data experiments (two-layer digits, hypergradients, gated VAE).

Every script is run through its `main(argv)` with `--smoke` into a temporary workdir;
the tests check the run record, the summary keys, the figures, and a few numbers that
can be checked against an independent oracle.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import hypergradients, two_layer_digits, vae_ard

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_run(workdir, figures_dir, summary_keys, figures):
    record = json.loads((workdir / "config.json").read_text())
    assert {"seed", "versions", "git_revision", "config"} <= set(record)
    assert record["versions"]["jax"] == jax.__version__
    summary = json.loads((workdir / "summary.json").read_text())
    assert set(summary_keys) <= set(summary), set(summary_keys) - set(summary)
    assert summary["wall_seconds"] > 0
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert lines and all("step" in json.loads(line) for line in lines)
    for name in figures:
        for folder in (workdir, figures_dir):
            data = (folder / name).read_bytes()
            assert len(data) > 1000 and data.startswith(PNG_MAGIC), (folder, name)
    return summary


def test_two_layer_digits_smoke(tmp_path):
    workdir, figs = tmp_path / "run", tmp_path / "figs"
    out = two_layer_digits.main(["--smoke", "--workdir", str(workdir), "--figures", str(figs)])
    summary = _check_run(workdir, figs, ["final_gamma", "selected_branch", "test_accuracy",
                                         "test_accuracy_mean", "val_accuracy_alone"],
                         ["two_layer_gamma.png", "two_layer_accuracy.png"])
    assert summary["test_accuracy_mean"] == pytest.approx(out["test_accuracy_mean"])
    gamma = np.asarray(summary["final_gamma"])
    cfg = two_layer_digits.Config.smoke()
    assert gamma.shape == (cfg.num_seeds, 2)
    # softmax relaxation: gamma on the simplex (float32 rounding, 1e-5)
    np.testing.assert_allclose(gamma.sum(-1), 1.0, atol=1e-5)
    acc = summary["test_accuracy"]
    # the retrained selected model is the branch trained alone that the search chose
    for s, branch in enumerate(summary["selected_branch"]):
        assert acc["selected, retrained"][s] == acc[f"{branch} branch alone"][s]
    # accuracies are multiples of 1 / num_test (exact counts)
    n = summary["num_test"]
    for values in acc.values():
        np.testing.assert_allclose(np.asarray(values) * n, np.round(np.asarray(values) * n),
                                   atol=1e-3)


@pytest.mark.slow  # six compiled programs (5 methods + the dense Hessian): ~30-40 s on 2 cores
def test_hypergradients_smoke_cg_matches_exact(tmp_path):
    workdir, figs = tmp_path / "run", tmp_path / "figs"
    hypergradients.main(["--smoke", "--workdir", str(workdir), "--figures", str(figs)])
    summary = _check_run(workdir, figs, ["relative_error", "cosine_to_exact", "checkpoint_steps",
                                         "seconds_per_hypergradient", "final", "lambda_max"],
                         ["hypergradients_trajectory.png", "hypergradients_error.png"])
    cfg = hypergradients.Config.smoke()
    assert set(summary["relative_error"]) == set(cfg.methods)
    assert len(summary["checkpoint_steps"]) == cfg.num_checkpoints + 1
    # float64 CG to tol 1e-10 on a ~400-weight problem with weight decay 0.05 (H positive
    # definite, condition number ~ 20): the solve agrees with the dense one to ~1e-10;
    # 1e-6 leaves room for the conditioning of the dense solve.
    assert max(summary["relative_error"]["cg"]) < 1e-6
    # the implicit term is not negligible here, so dropping it (greedy) must show an error
    assert min(summary["relative_error"]["greedy"]) > 1e-3
    assert summary["lambda_max"] > 0


@pytest.mark.slow  # end to end, the VAE experiment, ~75 s cold: run with -m slow
def test_vae_ard_smoke(tmp_path):
    workdir, figs = tmp_path / "run", tmp_path / "figs"
    vae_ard.main(["--smoke", "--workdir", str(workdir), "--figures", str(figs)])
    summary = _check_run(workdir, figs, ["gamma", "kl_per_dim", "kept_dims", "active_dims",
                                         "val_elbo_by_kept_dims", "test_elbo_full",
                                         "test_elbo_pruned", "best_k"],
                         ["vae_relevance.png", "vae_elbo.png"])
    cfg = vae_ard.Config.smoke()
    gamma = np.asarray(summary["gamma"])
    assert gamma.shape == (cfg.num_seeds, cfg.latent_dim)
    assert np.all((gamma > 0) & (gamma < 1))
    assert np.all(np.asarray(summary["kl_per_dim"]) >= 0)
    curve = np.asarray(summary["val_elbo_by_kept_dims"])
    assert curve.shape == (cfg.num_seeds, cfg.latent_dim + 1) and np.all(curve < 0)


def test_vae_elbo_terms_match_closed_forms():
    """KL against 0.5 (mu^2 + s^2 - 1) - log s; log-likelihood at mask 0 against numpy BCE."""
    cfg = vae_ard.Config.smoke()
    model = vae_ard.GatedVAE(cfg)
    x = jnp.asarray(vae_ard.load_pixels(0)[0][:5])
    params = model.init(jax.random.key(1), x)
    mask = jnp.zeros((cfg.latent_dim,))
    log_lik, kl = model.elbo_terms(params, x, jnp.ones((cfg.latent_dim,)), key=jax.random.key(2))
    mu, log_s = (np.asarray(a, np.float64) for a in model.encoder.apply({"params": params["enc"]}, x))
    expected_kl = 0.5 * (mu ** 2 + np.exp(2 * log_s) - 1) - log_s
    np.testing.assert_allclose(np.asarray(kl), expected_kl, rtol=1e-4, atol=1e-6)  # float32
    # with every dimension pruned the decoder sees z * gamma * 0 = 0, whatever z is
    log_lik0, _ = model.elbo_terms(params, x, mask, key=jax.random.key(3))
    logits = np.asarray(model.decoder.apply({"params": params["dec"]},
                                            jnp.zeros((1, cfg.latent_dim))), np.float64)
    xn = np.asarray(x, np.float64)
    p = 1 / (1 + np.exp(-logits))
    expected = np.sum(xn * np.log(p) + (1 - xn) * np.log(1 - p), -1)
    np.testing.assert_allclose(np.asarray(log_lik0), expected, rtol=1e-5)  # float32 sums of 64
    assert log_lik.shape == (5,)


@pytest.mark.parametrize("module, override, named", [
    (two_layer_digits, "method=\"newton\"", "method must be one of"),
    (hypergradients, "methods=[\"greedy\", \"bogus\"]", "methods must be"),
    (vae_ard, "steps=0", "steps must be an int >= 1"),
])
def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys, module, override, named):
    # a refused --set value: one error line naming the field (common.parse), exit status 2
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--smoke", "--workdir", str(tmp_path), "--set", override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
