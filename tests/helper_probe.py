"""Run in the daemon's helper process by tests: what it has imported (this module imports nothing heavy)."""
import sys


def imported(module: str) -> bool:
    return module in sys.modules
