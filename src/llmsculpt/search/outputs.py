"""What a search leaves in its study directory: best.yaml, trials.csv/json and PNG plots."""

from __future__ import annotations

from pathlib import Path

from llmsculpt.io.files import dumps_json


def completed(study) -> list:
    import optuna

    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def write_trials(study, study_dir: Path, tag: str) -> None:
    rows = [
        {"number": t.number, "state": t.state.name, "value": t.value, "seconds": t.user_attrs.get("seconds"), **t.params}
        for t in study.trials
    ]
    (study_dir / f"trials_{tag}.json").write_text(dumps_json(rows))
    study.trials_dataframe().to_csv(study_dir / f"trials_{tag}.csv", index=False)


def plot_history(studies: dict, study_dir: Path) -> Path:
    from llmsculpt.io.plots import _pyplot, save_figure

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for tag, study in studies.items():
        best, xs, ys = float("inf"), [], []
        for t in study.trials:
            if t.value is not None and t.value == t.value:
                best = min(best, t.value)
            if best < float("inf"):
                xs.append(t.number)
                ys.append(best)
        ax.plot(xs, ys, marker=".", label=f"{tag} best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("perplexity of the pruned model")
    ax.set_yscale("log")
    ax.legend()
    return save_figure(fig, study_dir / "history.png")


def plot_importances(study, study_dir: Path) -> Path | None:
    import optuna

    from llmsculpt.io.plots import _pyplot, save_figure

    if len(completed(study)) < 4:
        return None
    imp = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(imp) + 1.5))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names])
    ax.set_xlabel("importance (fANOVA)")
    return save_figure(fig, study_dir / "param_importances.png")
