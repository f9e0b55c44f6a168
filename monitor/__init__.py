"""taskmon daemon: event sources, state, detectors and alerts."""
