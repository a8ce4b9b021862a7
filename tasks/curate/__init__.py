"""The `curate` stage: CLAP-guided segment filtering (paper 000 §II-A) and p-MOS quality
levels (paper 003 §4.1) (`python -m tasks.curate`).
"""
