"""Alerts: rules over stored state and ``now`` decide what to mail; grouping throttles it.

``rules`` holds the rule configuration (the ``[alerts]`` table), ``conditions`` the pure
functions that turn stored rows into occurrences and conditions, ``grouping`` the pure plan
(fire, add to a digest, resolve) and ``runner`` the daemon job that
reads storage, applies the plan and hands the e-mails to the ``alerts`` queue.
"""
