"""Evaluation metrics for generated music over embeddings the pipeline already has (no I/O).

Set-level distances (FAD, FAD-infinity), label-distribution metrics (paired KL, Inception
Score), text-audio agreement (CLAP score), attribute checks (top-1, set precision/recall,
MIREX tempo accuracy) and percentile-bootstrap confidence intervals over prompts.

The formulas follow the reference toolkits so that numbers are comparable where the inputs are:
`audioldm_eval` (haoheliu/audioldm_eval, docs/reference.md §F.3), av-benchmark
(hkchengrex/av-benchmark, §F.4), fadtk (microsoft/fadtk, Gui et al. 2024) and FID-infinity
(mchong6/FID_IS_infinity, Chong & Forsyth 2020). Each function says where it departs from them.
A number is only comparable with another computed on the same embedding model (docs/reference.md
pitfall 14: VGGish, PANNs and CLAP FADs are different quantities).

Every function accepts NumPy arrays or CPU torch tensors and computes in float64.
"""
