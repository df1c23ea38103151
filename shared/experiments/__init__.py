"""``microzero experiment NAME``: named comparisons with confidence intervals.

variants.py (what is compared) -> runner.py (train + validate each variant x seed,
resumable) -> stats.py (intervals) -> report.py (results.md / results.json); cli.py
wires them. ppo.py is the optional stable-baselines3 reference agent.
"""
