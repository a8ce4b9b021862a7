"""The `finetune` stage: caption fine-tuning from the pretrained weights on the LLM-rewritten
inference-style captions of the fine-tuning subset (paper 000 §II-B, §IV-A: 10,000 steps).

Runs the same on CPU and under `accelerate launch -m tasks.finetune` on GPUs; a killed run
resumes from its last checkpoint. The work is in tasks/training_stage.py and tasks/trainer.py.
"""

from __future__ import annotations

from tasks import training_stage


def main() -> None:
    training_stage.main("finetune")


if __name__ == "__main__":
    main()
