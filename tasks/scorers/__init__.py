"""The `scorers` stage: trains the embedded CLAP and quality scorers on their own generated
pairs, or checks the real checkpoints, and reports how well they rank (`python -m tasks.scorers`).
"""
