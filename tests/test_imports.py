"""`import llmsculpt` stays lean: optional heavy packages load only with the features that need them."""

import subprocess
import sys


def test_import_does_not_pull_optional_packages():
    code = (
        "import sys, llmsculpt, llmsculpt.cli.main as m; m.build_parser(); "
        "heavy = [n for n in ('optuna', 'peft', 'lm_eval', 'matplotlib') if n in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_surface():
    import llmsculpt

    assert set(llmsculpt.__all__) >= {"prune", "load", "evaluate", "Plan", "PruneConfig", "SculptError"}
    assert all(hasattr(llmsculpt, name) for name in llmsculpt.__all__)
