"""The `captions` stage: caption refinement (paper 003 §4.3) and the inference-style rewrite
of the fine-tuning subset (paper 000 §II-B) (`python -m tasks.captions`).
"""
