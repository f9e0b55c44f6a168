"""Every setting has a one-line description and a row in the README's settings table."""
from dataclasses import fields

from tasks.settings import DESCRIPTIONS, ENV_PREFIX, Settings
from tests.services import REPO


def test_every_setting_is_described_and_in_the_readme_table():
    readme = (REPO / "README.md").read_text()
    for f in fields(Settings):
        assert DESCRIPTIONS.get(f.name), f.name
        assert f"| `{f.name}` | `{ENV_PREFIX}{f.name.upper()}` |" in readme, f.name
