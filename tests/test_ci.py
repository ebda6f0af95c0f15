"""The README's test command is what CI runs, and a test run leaves no temporary cache behind."""
import os
import re
import subprocess
import sys

from conftest import ROOT


def _readme_test_steps():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    m = re.search(r"Run the tests[^\n]*\n(?:[^\n]*\n)*?```bash\n(.*?)```", text, re.S)
    assert m, "README.md has no 'Run the tests' bash block"
    steps = [step.strip() for line in m.group(1).splitlines() for step in line.split("&&")
             if step.strip()]
    assert steps[0].startswith("python3 -m venv .venv"), steps
    return [s.replace(".venv/bin/", "", 1) for s in steps[1:]]


def _ci_steps():
    lines = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read().splitlines()
    start = next(i for i, s in enumerate(lines) if s.startswith("# --- the README"))
    return [s.strip() for s in lines[start + 1:] if s.strip() and not s.startswith("#")]


def test_readme_test_command_is_what_ci_runs():
    steps = _readme_test_steps()
    assert steps == _ci_steps()
    assert steps[-1].startswith("python -m pytest")
    assert any("facenet-pytorch" in s for s in steps)  # the encoder tests' reference


def test_a_run_removes_its_temporary_cache(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("IDGUARDIAN_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR")
           and not k.startswith("PYTEST_")}
    env["TMPDIR"] = str(tmp_path)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                        os.path.join(ROOT, "tests", "test_ci.py") + "::"
                        "test_readme_test_command_is_what_ci_runs"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert [n for n in os.listdir(tmp_path) if n.startswith("idguardian-test-cache-")] == []
