"""The two schedules of the run engine, read as event sequences without a model.

A fake run stands in for the engine: it holds the state, counts logged steps like the engine, and
answers a Train with a loss and a PruningStep by shrinking a parameter vector by the step's quantum.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmsculpt.config import AccelConfig, PretrainPruneConfig
from llmsculpt.run.accel import AccelSchedule
from llmsculpt.run.events import AttachLora, Checkpoint, MergeLora, PruneTo, PruningStep, Step, Train
from llmsculpt.run.pruning_aware import NEW_CYCLE, PRUNE, TRAIN, PruningAwareSchedule, next_action, training_steps
from llmsculpt.train.data import Example
from llmsculpt.train.schedule import learning_rate


class _Params(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n))


class FakeRun:
    def __init__(self, state: dict, counter: str, params: int = 1000) -> None:
        self.state, self.counter, self.model = state, counter, _Params(params)

    def params(self) -> int:
        return self.model.w.numel()

    def drive(self, schedule) -> list:
        events, gen, outcome = [], schedule.events(self), None
        while True:
            try:
                event = gen.send(outcome)
            except StopIteration:
                return events
            events.append(event)
            outcome = None
            if isinstance(event, Train):
                outcome = 1.0
            elif isinstance(event, Step):
                self.state[self.counter] += 1
            elif isinstance(event, PruningStep):
                self.model = _Params(self.params() - int(event.quantum))
                outcome = {"loss": 2.0, "type": "mlp", "removed": 1, "saliency": {}}


def _examples(n: int) -> list[Example]:
    """``n`` distinct examples of 16 tokens."""
    return [Example([100 + i] + list(range(4, 19)), [100 + i] + list(range(4, 19))) for i in range(n)]


def _kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


# ---- Adapt-Accel ------------------------------------------------------------------------------
def _accel(mode="full", **kw):
    cfg = AccelConfig(target_params=500, phases=2, batch_size=2, calib_samples=2, calib_len=8, mode=mode, **kw)
    schedule = AccelSchedule(_examples(12), cfg)
    schedule.targets = [700, 500]  # start() computes them from the model
    state = {"phase": 0, "pruned": False, "step_in_phase": 0, "global_step": 0}
    return schedule, FakeRun(state, schedule.counter)


def test_accel_phases_prune_then_train_on_growing_disjoint_shares():
    schedule, run = _accel(optimizer_state="carry")
    events = run.drive(schedule)
    assert schedule.shares == [4, 8] and schedule.steps == [2, 4] and schedule.total == 6
    phase = ["MergeLora", "PruneTo"]
    assert _kinds(events) == (phase + ["Train", "Step"] * 2 + ["MergeLora", "Checkpoint"]
                              + phase + ["Train", "Step"] * 4 + ["MergeLora", "Checkpoint"])
    prunes = [e for e in events if isinstance(e, PruneTo)]
    assert [p.config.target_params for p in prunes] == [700, 500] and all(p.carry for p in prunes)
    assert [p.config.seed for p in prunes] == [0, 1] and prunes[0].calibration.shape == (2, 8)
    trains = [e for e in events if isinstance(e, Train)]
    seen = [x.input_ids[0] for t in trains for x in t.examples]
    assert len(seen) == 12 == len(set(seen))  # every example once, drawn without replacement
    assert [t.lr for t in trains] == [learning_rate("wsd", g, 6, lr=2e-5, min_lr=2e-6) for g in range(6)]
    steps = [e.entry for e in events if isinstance(e, Step)]
    assert [s["phase"] for s in steps] == [0, 0, 1, 1, 1, 1] and steps[0]["loss"] == 1.0
    assert run.state == {"phase": 2, "pruned": False, "step_in_phase": 0, "global_step": 6}


def test_accel_lora_phase_checkpoints_its_base_then_attaches_seeded_adapters():
    schedule, run = _accel(mode="lora", seed=5)
    events = run.drive(schedule)
    assert _kinds(events)[:5] == ["MergeLora", "PruneTo", "Checkpoint", "AttachLora", "Train"]
    assert [e.optimizer for e in events if isinstance(e, Checkpoint)] == [False, True, False, True]
    assert [(e.seed, e.restore) for e in events if isinstance(e, AttachLora)] == [(5, False), (6, False)]
    assert not any(p.carry for p in events if isinstance(p, PruneTo))  # carry is for full training only
    assert schedule.resumed({"phase": 1, "pruned": True}) == [AttachLora(6, restore=True)]
    assert schedule.resumed({"phase": 1, "pruned": False}) == []


def test_accel_resumed_mid_phase_continues_with_the_same_batches():
    schedule, run = _accel()
    full = [e for e in run.drive(schedule) if isinstance(e, Train)]
    schedule, run = _accel()
    run.state.update(phase=1, pruned=True, step_in_phase=1, global_step=3)
    events = run.drive(schedule)
    assert _kinds(events)[0] == "Train" and "PruneTo" not in _kinds(events)
    trains = [e for e in events if isinstance(e, Train)]
    assert [t.examples for t in trains] == [t.examples for t in full[3:]]
    assert [t.lr for t in trains] == [t.lr for t in full[3:]]


# ---- pruning-aware training -------------------------------------------------------------------
def _cycle(*, over_for: int, prune_every: int, train_every: int, total_train: int) -> str:
    """The actions of a run whose model is over budget for its first ``over_for`` pruning steps."""
    out, in_cycle, pruned, trained = [], 0, 0, 0
    while True:
        over = pruned < over_for
        action = next_action(over=over, in_cycle=in_cycle, train_done=trained, total_train=total_train,
                             prune_every=prune_every, train_every=train_every)
        if action is None:
            return "".join(out)
        if action == NEW_CYCLE:
            in_cycle = 0
            continue
        out.append("P" if action == PRUNE else "T")
        pruned += action == PRUNE
        trained += action == TRAIN
        in_cycle += 1
        if over and in_cycle >= prune_every + train_every:
            in_cycle = 0


@pytest.mark.parametrize("cycle, over_for, total_train, want", [
    ((2, 1), 3, 4, "PPTPTTT"),  # 2:1, then the rest of the training once on budget
    ((1, 1), 3, 5, "PTPTPTTT"),
    ((4, 1), 5, 3, "PPPPTPTT"),
    ((1, 3), 2, 7, "PTTTPTTTT"),
    ((1, 0), 3, 2, "PPPTT"),  # no training between pruning steps: only the continued training
])
def test_pruning_aware_cycle(cycle, over_for, total_train, want):
    assert _cycle(over_for=over_for, prune_every=cycle[0], train_every=cycle[1], total_train=total_train) == want


def test_training_steps_follow_the_cycle():
    cfg = PretrainPruneConfig(target_params=700, cycle="2:1", quantum=0.1, continue_steps=2)
    assert training_steps(1000, cfg) == (3, 4)  # 3 pruning steps; ceil(3/2) cycles × 1 + 2 continued


def test_pruning_aware_schedule_events_batches_and_log_fields():
    cfg = PretrainPruneConfig(target_params=700, cycle="2:1", quantum=0.1, continue_steps=2, batch_size=2)
    schedule = PruningAwareSchedule(_examples(5), cfg)
    schedule.quantum, schedule.total_train = 100.0, 4  # start() computes them from the model
    run = FakeRun({"step": 0, "train_done": 0, "prune_done": 0, "tokens": 0, "cursor": 0, "in_cycle": 0}, "step")
    events = run.drive(schedule)
    work = [e for e in events if isinstance(e, (Train, PruningStep))]
    assert "".join("P" if isinstance(e, PruningStep) else "T" for e in work) == "PPTPTTT"
    assert isinstance(events[-1], Checkpoint)
    assert [e.prune_done for e in work if isinstance(e, PruningStep)] == [0, 1, 2]
    steps = [e.entry for e in events if isinstance(e, Step)]
    assert [s["params"] for s in steps] == [900, 800, 800, 700, 700, 700, 700]
    assert [s["tokens"] for s in steps] == [32 * (k + 1) for k in range(7)]  # 2 examples × 16 tokens a step
    assert steps[0]["type"] == "mlp" and steps[2]["type"] == "train"
    assert [t.lr for t in work if isinstance(t, Train)] == [learning_rate("wsd", k, 4, lr=cfg.lr, min_lr=cfg.min_lr)
                                                            for k in range(4)]
    assert run.state["cursor"] == 14 and run.state["train_done"] == 4 and run.state["step"] == 7
