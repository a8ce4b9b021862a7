"""The `corpus` stage: the embedded procedural corpus, or a researcher's own audio and caption
files ingested into the same tables (`python -m tasks.corpus`).
"""
