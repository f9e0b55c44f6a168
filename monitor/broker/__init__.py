"""Talking to the broker the monitored workers use: live queue depths (and, for the commands, control)."""
