"""The `evaluate` stage (`python -m tasks.evaluate`): generation for held-out prompts, both
papers' metrics (`tasks.evaluate.metrics`, no I/O) with bootstrap intervals, the papers'
tables and figures and the listening page.
"""
