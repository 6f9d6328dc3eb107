"""Hand-written plans shared by the invariant tests, in fp32 (test_surgery.py, test_save_load.py)
and bf16 (test_bf16_invariants.py)."""

from llmsculpt.plan import Plan


def mixed_plan(arch, *, hidden=True, cluster=True) -> Plan:
    """A whole K/V group, uneven cluster attention, a dropped layer, half an MLP, a fifth of the hidden channels."""
    p = Plan.keep_all(arch)
    p.layers[0].heads, p.layers[0].kv_heads = [2, 3], [1]  # a whole K/V group goes
    if cluster:
        p.layers[1].heads, p.layers[1].kv_heads = [0, 2, 3], [0, 1]  # uneven: 1 + 2 query heads
    p.layers[2].drop = True
    p.layers[3].mlp = list(range(0, arch.layers[3].mlp, 2))
    if hidden:
        p.hidden = [i for i in range(arch.hidden) if i % 5]
    return p


def save_load_plan(arch, heterogeneous: bool) -> Plan:
    """Per layer (cluster attention, a dropped layer, a narrower MLP: our config class) or uniform
    (fewer heads, MLP channels and hidden channels everywhere: the family's own class)."""
    plan = Plan.keep_all(arch)
    if heterogeneous:
        plan.layers[1].heads, plan.layers[1].kv_heads = [0, 2, 3], [0, 1]  # cluster attention
        plan.layers[2].drop = True
        plan.layers[3].mlp = list(range(50))
    else:
        for lp in plan.layers:
            lp.mlp, lp.heads, lp.kv_heads = list(range(50)), [2, 3], [1]
        plan.hidden = list(range(40))
    return plan


def second_plan(arch, *, hidden: int) -> Plan:
    """A second pruning step on a model ``mixed_plan`` pruned (``arch``): a narrower MLP in layer 0,
    a K/V group of layer 2, and only the first ``hidden`` hidden channels kept (plan composition)."""
    p = Plan.keep_all(arch)
    p.layers[0].mlp = list(range(1, 50))
    p.layers[2].heads, p.layers[2].kv_heads = [0, 1], [0]
    p.hidden = list(range(0, hidden))
    return p
