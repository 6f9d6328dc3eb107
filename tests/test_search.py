"""Sample-aware search: deterministic objective, resumable study, best.yaml replays the best trial."""

import pytest

pytest.importorskip("optuna")

from llmsculpt.cli.main import main  # noqa: E402
from llmsculpt.config import PruneConfig  # noqa: E402
from llmsculpt.eval.perplexity import perplexity  # noqa: E402
from llmsculpt.search.study import Objective, SearchSetup, run_study  # noqa: E402
from llmsculpt.testing import tiny_model, tiny_tokenizer  # noqa: E402

CALIB = ("Pruning removes heads and channels from a language model; what remains is smaller. " * 12 + "\n\n") * 12
EVAL = "Held-out words about models, heads, channels and the art of pruning them well. " * 40


@pytest.fixture
def objective(tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text(CALIB)
    cfg = PruneConfig(ratio=0.3, data={"calib": str(calib), "seq_len": 32, "n_samples": 3})
    setup = SearchSetup(tiny_model("tiny-llama"), tiny_tokenizer(), cfg, [EVAL], pool_size=6, n_samples=3, eval_windows=8)
    return Objective(setup)


def test_objective_is_deterministic_and_depends_on_the_recipe(objective):
    a = objective.evaluate([0, 1, 2], 0.5, 0.5, 1.0, 1.0)
    assert a == objective.evaluate([2, 1, 0], 0.5, 0.5, 1.0, 1.0)
    assert a != objective.evaluate([3, 4, 5], 1.0, 0.0, 1.0, 1.0)


def test_study_resumes(objective, tmp_path):
    first = run_study(objective, tmp_path / "study", trials=2)
    assert len(first.trials) == 2
    again = run_study(objective, tmp_path / "study", trials=4)
    assert len(again.trials) == 4 and [t.number for t in again.trials] == [0, 1, 2, 3]


def test_best_yaml_reproduces_the_best_trial(objective, tmp_path):
    from llmsculpt import prune

    study = run_study(objective, tmp_path / "s", trials=3)
    recipe = objective.recipe(study.best_params)
    recipe.to_yaml(tmp_path / "best.yaml")
    cfg = PruneConfig.from_yaml(tmp_path / "best.yaml")
    out = prune(tiny_model("tiny-llama"), tokenizer=tiny_tokenizer(), config=cfg)
    ppl = perplexity(out.model, tiny_tokenizer(), EVAL, seq_len=32, max_windows=8).ppl
    assert ppl == pytest.approx(study.best_value, rel=1e-6)


def test_search_cli_writes_outputs(tmp_path, capsys):
    calib, ev = tmp_path / "c.txt", tmp_path / "e.txt"
    calib.write_text(CALIB)
    ev.write_text(EVAL)
    args = ["search", "--model", "tiny-qwen2", "--ratio", "0.25", "--trials", "3", "--n-samples", "2", "--pool-size", "4",
            "--seq-len", "32", "--calib", str(calib), "--eval-text", str(ev), "--study", str(tmp_path / "st")]
    assert main(args) == 0
    assert {"best.yaml", "study.db", "trials_tpe.csv", "history.png"} <= {p.name for p in (tmp_path / "st").iterdir()}
    assert main(["prune", "--config", str(tmp_path / "st" / "best.yaml"), "--no-eval", "--out", str(tmp_path / "m")]) == 0
    assert main(args[:-2] + ["--pool-size", "1", "--study", str(tmp_path / "bad")]) == 2


def test_tpe_models_the_results_after_a_few_random_trials(objective, tmp_path):
    """With a small budget TPE must get past its random start-up phase, else it *is* random search."""
    from llmsculpt.search.study import make_sampler, startup_trials

    assert [startup_trials(n) for n in (4, 8, 20, 40, 100)] == [3, 3, 5, 10, 10]
    assert make_sampler("tpe", 0, 20)._n_startup_trials == 5
    tpe = run_study(objective, tmp_path / "tpe", sampler="tpe", trials=5)
    rnd = run_study(objective, tmp_path / "rnd", sampler="random", trials=5)
    same = [a.params == b.params for a, b in zip(tpe.trials, rnd.trials)]
    assert same[:3] == [True] * 3 and not all(same)  # shared seeded start, then TPE proposes its own


def test_calibration_slots_are_categorical(objective, tmp_path):
    """Pool slots are names, not quantities: TPE must not treat sample 3 as "near" sample 4."""
    import optuna

    study = run_study(objective, tmp_path / "study", trials=1)
    dists = study.trials[0].distributions
    slots = [d for k, d in dists.items() if k.startswith("sample_")]
    assert len(slots) == 3
    assert all(isinstance(d, optuna.distributions.CategoricalDistribution) for d in slots)
    assert all(list(d.choices) == list(range(6)) for d in slots)
