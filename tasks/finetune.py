"""The `finetune` stage: caption fine-tuning from the pretrained weights on the LLM-rewritten
inference-style captions of the fine-tuning subset (paper 000 §II-B, §IV-A: 10,000 steps).

Runs the same on CPU and under `accelerate launch -m tasks.finetune` on GPUs; a killed run
resumes from its last checkpoint. The work is in tasks/training_stage.py and tasks/trainer.py.
"""

from __future__ import annotations

from tasks import training_stage
from tasks.params import load_stage_params


def main() -> None:
    summary = training_stage.run(load_stage_params(), "finetune")
    if summary:
        print(
            f"finetune: {summary['steps']} steps in {summary['wall_seconds']:.0f} s, val flow "
            f"matching {summary['first_val_flow_matching']:.4f} -> "
            f"{summary['val_flow_matching']:.4f}"
        )


if __name__ == "__main__":
    main()
