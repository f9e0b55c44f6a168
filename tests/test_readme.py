"""The README's set-up commands are the ones CI runs."""
import re

from tests.services import REPO


def readme_commands():
    return re.findall(r"```(?:bash|sh)\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)


def test_readme_has_exactly_two_setup_commands():
    setup = [c for c in readme_commands() if c.startswith("python3 -m venv")]
    assert len(setup) == 2, setup


def test_ci_runs_the_readme_test_command():
    ci_line = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_line in readme_commands()
