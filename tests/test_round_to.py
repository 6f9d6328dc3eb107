"""``round_to``: every width a planner changes is a multiple of N (MLP widths, query heads × head_dim,
hidden), the parameter count stays near the target, ``round_to=1`` reproduces the plans of the code
before rounding existed, and bad values are refused in one line."""

import hashlib
import json
import random

import pytest
import torch

from llmsculpt.allocation import PruneScope, apportion, head_step, select_plan, solve_uniform_offset
from llmsculpt.allocation.rounding import allowed, nearest
from llmsculpt.config import PruneConfig
from llmsculpt.errors import SculptError
from llmsculpt.importance.groups import GroupScores, LayerScores
from llmsculpt.methods import PruneContext, prune_model
from llmsculpt.config import AccelConfig
from llmsculpt.run import run_accel
from llmsculpt.methods.pruning_aware import candidates, plan_for
from llmsculpt.config import PretrainPruneConfig
from llmsculpt.run import pretrain_prune
from llmsculpt.importance.saliency import Saliency
from llmsculpt.structures.shapes import Architecture, LayerShape, architecture, count_params
from llmsculpt.testing import tiny_model, tiny_tokenizer

from _runs import accel_case, pretrain_case
from conftest import FAMILIES

MHA8 = dict(num_attention_heads=8, num_key_value_heads=8, head_dim=8)  # head_dim 8: N=16 needs even heads
GQA8 = dict(num_attention_heads=8, num_key_value_heads=4, head_dim=8)


def calib(seed):
    return torch.randint(4, 128, (4, 32), generator=torch.Generator().manual_seed(seed))


def run(method, model, **cfg):
    """Plan with ``method`` and prune ``model`` in place; returns the PruneResult."""
    return prune_model(PruneContext(model, tiny_tokenizer(), PruneConfig(method=method, **cfg), calib,
                                    inplace=True))[1]


def fingerprint(plan) -> str:
    return hashlib.sha1(json.dumps(plan.to_dict()["layers"] + [plan.hidden], sort_keys=True).encode()).hexdigest()[:16]


def assert_multiples(arch: Architecture, source: Architecture, n: int) -> None:
    """Every width that changed is a multiple of ``n``; none grew."""
    assert arch.hidden <= source.hidden and (arch.hidden == source.hidden or arch.hidden % n == 0)
    for i, (ls, src) in enumerate(zip(arch.layers, source.layers)):
        assert ls.mlp <= src.mlp and (ls.mlp == src.mlp or ls.mlp % n == 0), (i, ls.mlp)
        assert ls.n_heads <= src.n_heads, i
        assert ls.n_heads == src.n_heads or ls.n_heads * arch.head_dim % n == 0, (i, ls.n_heads)


def quantum(arch: Architecture, n: int) -> int:
    """Parameters of n MLP channels: the granularity rounding adds to the total."""
    return n * (3 * arch.hidden + (2 if arch.mlp_bias else 0))


# ---- the rounding maths --------------------------------------------------------------------------

def test_head_step_allowed_and_nearest():
    assert head_step(32, 64) == head_step(32, 128) == 1  # the usual head_dims: any head count
    assert head_step(32, 16) == 2 and head_step(32, 16, heads_per_unit=2) == 1
    assert head_step(16, 8) == 2 and head_step(48, 64) == 3 and head_step(1, 7) == 1
    assert allowed(96, 32) == [32, 64, 96]
    assert allowed(100, 16) == [16, 32, 48, 64, 80, 96, 100]  # a non-multiple may stay as it is
    assert allowed(8, 16) == [8]  # narrower than N: cannot be pruned
    assert nearest(70, [32, 64, 96]) == 64 and nearest(80, [32, 64, 96]) == 96 and nearest(3, [32, 64]) == 32


def test_apportion_lands_within_half_a_step_of_the_target():
    rng = random.Random(0)
    options = [32 * k for k in range(1, 7)]
    for _ in range(50):
        ideal = {i: rng.randint(20, 180) for i in range(10)}
        keep = apportion(ideal, dict.fromkeys(ideal, options), dict.fromkeys(ideal, 1))
        for i, k in keep.items():
            assert k in options and abs(k - ideal[i]) < 32 or k == 32 and ideal[i] < 32
        assert abs(sum(ideal[i] - keep[i] for i in ideal)) <= 16
    assert apportion({0: 70, 1: 70}, {0: options, 1: options}, {0: 1, 1: 1}, excess=-20) == {0: 96, 1: 64}


# ---- round_to=1 is the code path from before ------------------------------------------------------

# plans from the code before round_to existed (same models, seeds and calibration); the adaptive
# rows re-pinned for issue 17's allocation (cumulative offsets, amplitude relative to the step)
PINNED = [
    ("uniform", "tiny-llama", {"ratio": 0.3}, "36c9670c387d2a32"),
    ("uniform", "tiny-qwen2", {"attn_unit": "head", "ratio": 0.25}, "c050067e68ecd955"),
    ("magnitude", "tiny-mistral", {"ratio": 0.3}, "101c37c01e50ec3e"),
    ("wanda-sp", "tiny-qwen3", {"ratio": 0.2}, "c9e48d6229d0c6fa"),
    ("adaptive", "tiny-llama", {"options": {"steps": 3}, "ratio": 0.3}, "bd6428f96c101b5b"),
    ("adaptive", "tiny-qwen2", {"attn_unit": "head", "options": {"amplitude": 0.1, "steps": 2}, "ratio": 0.2},
     "553f17151ae58add"),
    ("adaptive", "tiny-llama-tied", {"options": {"steps": 2}, "ratio": 0.2, "split": "proportional"},
     "7d583b83d29b5aa5"),
    ("flap", "tiny-llama", {"ratio": 0.3}, "9569b16168b9da28"),
    ("flap", "tiny-qwen2", {"attn_unit": "head", "ratio": 0.3}, "e59f36ec4c1e29f9"),
    ("uniform", "tiny-llama", {"mlp": False, "ratio": 0.1}, "894beeef77d3a04c"),
    ("uniform", "tiny-llama", {"attention": False, "ratio": 0.2}, "dc22c4832be4ae15"),
]


@pytest.mark.parametrize("method, family, cfg, want", PINNED, ids=[f"{c[0]}-{c[1]}" for c in PINNED])
def test_round_to_1_gives_the_plans_from_before(method, family, cfg, want):
    assert fingerprint(run(method, tiny_model(family), round_to=1, **cfg).plan) == want


def _synthetic_arch() -> Architecture:
    ls = LayerShape(8, 4, 200, tuple(h // 2 for h in range(8)))
    return Architecture("llama", 256, 128, 16, tuple([ls] * 6), False, False)


def test_round_to_1_allocators_give_the_results_from_before():
    g = torch.Generator().manual_seed(1)
    want = ["2eae2b86e84641aa", "b161f7b091ef2b5a", "bbff1cabfdee1047", "6aef16eb7ea8c2bc", "97ff1149c6c13066",
            "ab39b46f61177651"]
    for (unit, split, att, mlp), pinned in zip(
        [("kv", "proportional", True, True), ("head", "proportional", True, True), ("kv", "importance", True, True),
         ("head", "importance", True, True), ("kv", "proportional", False, True), ("kv", "proportional", True, False)],
        want,
    ):
        a = _synthetic_arch()
        sc = GroupScores([LayerScores(torch.rand(8, generator=g), torch.rand(4, generator=g),
                                      torch.rand(200, generator=g)) for _ in a.layers])
        scope = PruneScope(attention=att, mlp=mlp, attn_unit=unit, split=split, round_to=1)
        _, budgets = solve_uniform_offset(a, int((0.3 if mlp else 0.1) * a.param_count()), scope,
                                          offsets={i: 0.05 * i for i in range(6)}, scores=sc)
        assert fingerprint(select_plan(a, sc, budgets, scope)) == pinned
    a = architecture(tiny_model("tiny-llama"))
    sal = Saliency([torch.rand(4, generator=g) for _ in a.layers], [torch.rand(96, generator=g) for _ in a.layers],
                   torch.rand(64, generator=g))
    pinned = {
        "attention": [("704d2e66e94d3d2f", 0.03396714), ("db9f92a42cdec0f5", 0.27848637), ("a9fdbb2aa9492041", 0.34575709)],
        "mlp": [("bc17cf7696c1fcbc", 0.01009993), ("3567bf97ad200375", 0.1260462), ("6b3249d06ee179e0", 0.38445984)],
        "stem": [("a2725c9b80633619", 0.00300121), ("fdbc20426c3c6cb2", 0.04620734), ("32dcc987781ae1ef", 0.15968934)],
    }
    for kind in ("attention", "mlp", "stem"):
        for budget, (plan_hash, mean) in zip((1000, 20000, 60000), pinned[kind]):
            units, got = candidates(sal, a, kind, budget, round_to=1)
            assert (fingerprint(plan_for(a, kind, units)), round(got, 8)) == (plan_hash, mean)


# ---- every method keeps multiples ---------------------------------------------------------------

ONE_SHOT = [("uniform", {}, family) for family in FAMILIES] + [
    ("magnitude", {}, "tiny-mistral"), ("wanda-sp", {}, "tiny-qwen3"), ("uniform", {"split": "importance"}, "tiny-qwen2"),
    ("adaptive", {"options": {"steps": 2, "amplitude": 0.1}}, "tiny-llama"),
    ("adaptive", {"options": {"steps": 2, "amplitude": 0.1}, "attn_unit": "head"}, "tiny-qwen2"),
]


@pytest.mark.parametrize("method, cfg, family", ONE_SHOT, ids=[f"{m}-{f}" for m, _, f in ONE_SHOT])
def test_one_shot_and_adaptive_widths_are_multiples_near_the_target(method, cfg, family):
    model = tiny_model(family)
    source, before = architecture(model), count_params(model)
    result = run(method, model, ratio=0.3, round_to=16, **cfg)
    after = architecture(model)
    assert_multiples(after, source, 16)
    assert result.plan.resulting(source) == after
    assert any(ls.mlp < 96 for ls in after.layers)
    assert abs(count_params(model) - round(0.7 * before)) <= quantum(source, 16)


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-qwen2", "tiny-qwen3"])
@pytest.mark.parametrize("unit", ["kv", "head"])
def test_flap_widths_are_multiples_near_its_unrounded_result(family, unit):
    plain = tiny_model(family)
    run("flap", plain, ratio=0.3, attn_unit=unit)
    model = tiny_model(family)
    source, target = architecture(model), count_params(model) - round(0.3 * count_params(model))
    result = run("flap", model, ratio=0.3, attn_unit=unit, round_to=32)
    assert_multiples(architecture(model), source, 32)
    assert [ls.mlp for ls in result.plan.resulting(source).layers] == [ls.mlp for ls in architecture(model).layers]
    assert abs(count_params(model) - target) <= abs(count_params(plain) - target) + quantum(source, 32)


@pytest.mark.parametrize("method, cfg, prunes_heads", [
    ("uniform", {}, True), ("uniform", {"split": "importance"}, False), ("uniform", {"mlp": False, "ratio": 0.1}, True),
    ("adaptive", {"options": {"steps": 2}}, False), ("flap", {}, True), ("flap", {"attn_unit": "head"}, True),
])
def test_head_counts_are_rounded_where_head_dim_needs_it(method, cfg, prunes_heads):
    """head_dim 8 and N = 16: kept query heads must be even."""
    model = tiny_model("tiny-llama", **MHA8)
    source = architecture(model)
    run(method, model, round_to=16, **({"ratio": 0.3} | cfg))
    after = architecture(model)
    assert_multiples(after, source, 16)
    assert all(ls.n_heads % 2 == 0 for ls in after.layers)
    if prunes_heads:
        assert any(ls.n_heads < 8 for ls in after.layers)


def test_a_width_that_is_not_a_multiple_stays_or_becomes_one():
    """MLP width 100, N = 16: a layer keeps its 100 channels or drops to a multiple of 16 (never 100 -> 90)."""
    for method, cfg in (("uniform", {"ratio": 0.2}),
                        ("adaptive", {"ratio": 0.1, "options": {"steps": 2, "amplitude": 0.3}})):
        model = tiny_model("tiny-llama", intermediate_size=100)
        run(method, model, round_to=16, **cfg)
        widths = [ls.mlp for ls in architecture(model).layers]
        assert all(w == 100 or w % 16 == 0 for w in widths) and min(widths) < 100
    model = tiny_model("tiny-llama", intermediate_size=12)  # narrower than N: left alone, attention takes it all
    run("uniform", model, round_to=16, ratio=0.1)
    assert [ls.mlp for ls in architecture(model).layers] == [12] * 4


def watch_surgery(monkeypatch, module, source, n: int) -> list:
    """Check every plan ``module`` applies keeps multiples of ``n``; returns the architectures seen."""
    apply, seen = module.apply_plan, []

    def checked(m, plan):
        out = apply(m, plan)
        seen.append(architecture(m))
        assert_multiples(seen[-1], source, n)
        return out

    monkeypatch.setattr(module, "apply_plan", checked)
    return seen


def test_every_adaptive_step_keeps_multiples(monkeypatch):
    import llmsculpt.methods.adaptive as adaptive

    model = tiny_model("tiny-llama", **GQA8)
    source = architecture(model)
    seen = watch_surgery(monkeypatch, adaptive, source, 16)
    run("adaptive", model, ratio=0.3, round_to=16, options={"steps": 4})
    assert len(seen) >= 3 and seen[-1].param_count() < seen[0].param_count()


def test_layer_removal_ignores_round_to():
    a, b = tiny_model("tiny-llama"), tiny_model("tiny-llama")
    assert fingerprint(run("shortgpt", a, ratio=0.3).plan) == fingerprint(run("shortgpt", b, ratio=0.3, round_to=32).plan)


def test_search_recipe_keeps_round_to_and_replays_with_multiples(tmp_path):
    pytest.importorskip("optuna")
    from llmsculpt.search.study import Objective, SearchSetup

    text = tmp_path / "calib.txt"
    text.write_text(("Pruning removes heads and channels from a language model; what remains is smaller. " * 12
                     + "\n\n") * 12)
    cfg = PruneConfig(ratio=0.3, round_to=16, data={"calib": str(text), "seq_len": 32, "n_samples": 2})
    objective = Objective(SearchSetup(tiny_model("tiny-llama"), tiny_tokenizer(), cfg, ["held-out words " * 40],
                                      pool_size=3, n_samples=2, eval_windows=4))
    params = {"sample_0": 0, "sample_1": 2, "alpha1": 0.5, "alpha2": 0.5, "lambda1": 1.0, "lambda2": 1.0}
    recipe = objective.recipe(params)
    recipe.to_yaml(tmp_path / "best.yaml")
    replay = PruneConfig.from_yaml(tmp_path / "best.yaml")
    assert replay.round_to == 16
    model = tiny_model("tiny-llama")
    source = architecture(model)
    prune_model(PruneContext(model, tiny_tokenizer(), replay, calib, inplace=True))
    assert_multiples(architecture(model), source, 16)
    assert any(ls.mlp < 96 for ls in architecture(model).layers)


# ---- iterative runs: pruning-aware training and Adapt-Accel --------------------------------------

@pytest.mark.parametrize("order, target", [(("stem", "attention", "mlp"), 95_000), (None, 110_000)])
def test_pruning_aware_training_keeps_multiples_at_every_step(monkeypatch, order, target):
    import llmsculpt.run.pruning as loop

    model, tok, examples, cfg = pretrain_case(round_to=16, fixed_order=order, obs=False, target_params=target)
    model = tiny_model("tiny-llama", **GQA8)
    source = architecture(model)
    seen = watch_surgery(monkeypatch, loop, source, 16)
    model, plan, log = pretrain_prune(model, tok, examples, cfg, progress=False)
    after = architecture(model)
    assert plan.resulting(source) == after and seen[-1] == after
    assert count_params(model) <= target
    if order:  # every type pruned, at whatever cost the fixed order imposes
        assert after.hidden < source.hidden and any(ls.n_heads < 8 for ls in after.layers)
    else:  # free choice: the last step takes the type that overshoots least
        assert count_params(model) >= target - quantum(source, 16)


def test_adapt_accel_ends_at_multiples_near_the_target(tmp_path):
    model, tok, examples, cfg = accel_case(tmp_path / "t.txt", round_to=16)
    source = architecture(model)
    model, plan, _ = run_accel(model, tok, examples, cfg, checkpoint_dir=tmp_path / "c", progress=False)
    assert_multiples(architecture(model), source, 16)
    assert plan.resulting(source) == architecture(model)
    assert abs(count_params(model) - cfg.target_params) <= quantum(source, 16)


# ---- the CLI and bad values ------------------------------------------------------------------------

def test_prune_cli_passes_round_to_and_a_recipe_can_set_it(tmp_path, capsys):
    from llmsculpt.cli.main import main

    recipe = tmp_path / "r.yaml"
    PruneConfig(method="uniform", ratio=0.3, round_to=32).to_yaml(recipe)
    args = ["prune", "--model", "tiny-llama", "--config", str(recipe), "--n-samples", "2", "--seq-len", "32",
            "--dry-run", "--no-eval", "--json"]
    for extra, want in (([], 32), (["--round-to", "16"], 16)):
        assert main(args + extra) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["config"]["round_to"] == want
        widths = [v["mlp_channels"] for v in report["history"]["per_layer"].values()]
        assert all((96 - c) % want == 0 for c in widths)


@pytest.mark.parametrize("value", [0, -32, 1.5, "32", True])  # None: the --serve runtime's default (test_serve.py)
def test_bad_round_to_is_refused_in_one_line(value):
    for make in (lambda: PruneConfig(round_to=value), lambda: PruneScope(round_to=value),
                 lambda: AccelConfig(target_params=1000, round_to=value),
                 lambda: PretrainPruneConfig(target_params=1000, round_to=value)):
        with pytest.raises(SculptError, match="round_to must be a positive integer") as err:
            make()
        assert "\n" not in str(err.value)


def test_bad_round_to_is_refused_by_every_command(tmp_path, capsys):
    from llmsculpt.cli.main import main

    data = tmp_path / "d.txt"
    data.write_text("Pruning removes heads and channels; training recovers what was lost. " * 30)
    (tmp_path / "bad.yaml").write_text("round_to: 0\n")
    commands = [
        ["prune", "--model", "tiny-llama", "--round-to", "0", "--dry-run"],
        ["prune", "--model", "tiny-llama", "--config", str(tmp_path / "bad.yaml"), "--dry-run"],
        ["accel", "--model", "tiny-llama", "--target-params", "100000", "--data", str(data), "--round-to", "0",
         "--out", str(tmp_path / "a")],
        ["pretrain-prune", "--model", "tiny-llama", "--target-params", "100000", "--data", str(data),
         "--round-to", "-8", "--out", str(tmp_path / "p")],
    ]
    try:
        import optuna  # noqa: F401

        commands.append(["search", "--model", "tiny-llama", "--round-to", "0", "--study", str(tmp_path / "s")])
    except ImportError:
        pass
    for argv in commands:
        assert main(argv) == 2, argv
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and "round_to must be a positive integer" in err[0], (argv, err)
    assert not any((tmp_path / name).exists() for name in ("a", "p", "s"))
